# Raw TCP both ways at once between two hosts (bench/multihost.sh RAW_TCP=1): one connection carrying both
# directions, or one connection per direction. Prints the MB/s each side received.
#   tcp_bidir.py server PORT | tcp_bidir.py client HOST PORT MODE(one|two) SECONDS
import socket, sys, threading, time
CH = b"x" * (1 << 20)
def pump_send(s, stop):
    n = 0
    while not stop.is_set():
        try: n += s.send(CH)
        except OSError: break
    return n
def pump_recv(s, out, key):
    n = 0
    while True:
        b = s.recv(1 << 20)
        if not b: break
        n += len(b)
    out[key] = n
def run(socks_send, socks_recv, secs):
    stop = threading.Event(); out = {}
    rt = [threading.Thread(target=pump_recv, args=(s, out, i)) for i, s in enumerate(socks_recv)]
    for t in rt: t.start()
    st = [threading.Thread(target=pump_send, args=(s, stop)) for s in socks_send]
    t0 = time.time()
    for t in st: t.start()
    time.sleep(secs); stop.set()
    for t in st: t.join()
    for s in socks_send: s.shutdown(socket.SHUT_WR)
    for t in rt: t.join()
    return sum(out.values()) / (time.time() - t0)
if sys.argv[1] == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", int(sys.argv[2]))); ls.listen(4)
    while True:
        c, _ = ls.accept()
        mode, secs = c.recv(64).decode().split()
        c.sendall(b"k")
        if mode == "one":
            r = run([c], [c], float(secs))
        else:
            c2, _ = ls.accept()
            r = run([c2], [c], float(secs))   # c carries client->server, c2 server->client
        print("server received %.1f MB/s" % (r / 1e6), flush=True)
else:
    host, port, mode, secs = sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    c = socket.create_connection((host, port)); c.sendall(("%s %s" % (mode, secs)).ljust(64).encode()); c.recv(1)
    if mode == "one":
        r = run([c], [c], secs)
    else:
        c2 = socket.create_connection((host, port))
        r = run([c], [c2], secs)
    print("client received %.1f MB/s" % (r / 1e6), flush=True)
