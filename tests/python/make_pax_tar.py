"""Writes tar archives whose pax `size=` record differs from the ustar size field, with Python's tarfile as the
independent writer, for data_format_test (Tar.PaxSizeRecord*).

  make_pax_tar.py override OUT   member 'big.bin' of 1000 bytes, ustar size field 0, pax size=1000;
                                  then 'after.cls' (plain member) to show the next header is found.
  make_pax_tar.py huge OUT       member 'huge.bin' of 9 GiB (sparse file), ustar size field 0, pax size=...;
                                  then 'after.cls'.
  make_pax_tar.py bad OUT VALUE  member whose pax record is size=VALUE.
Prints what Python's own reader sees: one "name size offset_data" line per member.
"""
import sys
import tarfile

BLOCK = tarfile.BLOCKSIZE


def header(name, ustar_size, pax_size):
    info = tarfile.TarInfo(name)
    info.size = ustar_size
    info.mode = 0o644
    info.pax_headers = {"size": pax_size}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def plain(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return buf + data + b"\0" * (-len(data) % BLOCK)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    with open(out, "wb") as f:
        if mode == "override":
            data = bytes(i % 251 for i in range(1000))
            f.write(header("big.bin", 0, "1000") + data + b"\0" * (-len(data) % BLOCK))
            f.write(plain("after.cls", b"7"))
        elif mode == "huge":
            size = 9 << 30
            f.write(header("huge.bin", 0, str(size)))
            f.seek(size, 1)  # a hole: the archive is sparse on disk
            f.write(plain("after.cls", b"7"))
        elif mode == "bad":
            f.write(header("bad.bin", 0, sys.argv[3]) + b"\0" * BLOCK)
        f.write(b"\0" * (2 * BLOCK))
    if mode != "bad":
        with tarfile.open(out, "r:") as t:
            for m in t.getmembers():
                print(m.name, m.size, m.offset_data)


if __name__ == "__main__":
    main()
