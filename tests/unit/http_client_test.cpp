// The HTTP clients against a real server: nginx on loopback, configured in a scratch directory, sends
// Content-Length bodies, chunked bodies (SSI output has no length), a body trickled by limit_rate and a proxied
// upstream that never answers. A tiny raw server adds what nginx will not do: a body cut short of its
// Content-Length. The status client is cluster/http_client.cpp; the shard fetcher (data/http_fetch.h) is tested
// over TLS (a CA and a server certificate made by the openssl command for each test) and for its range resume.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "cluster/client.h"
#include "common/error.h"
#include "data/http_fetch.h"
#include "storage/file_io.h"
#include "tests/unit/test_util.h"

namespace stride::cluster {
namespace {

using testing::ScratchDir;
namespace fs = std::filesystem;
constexpr const char* kNginx = "/usr/sbin/nginx";

// A listening socket on 127.0.0.1 that never accepts: the kernel completes connections into its backlog, and
// nothing is ever answered.
int silent_listener(uint16_t* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 16) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

uint16_t free_port() {
  uint16_t port = 0;
  const int fd = silent_listener(&port);
  ::close(fd);
  return port;
}

bool can_connect(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

std::string pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + static_cast<size_t>(seed)) % 26);
  return s;
}

// nginx in the foreground (one process, no master) with everything under `dir`.
class Nginx {
 public:
  Nginx(const std::string& dir, uint16_t silent_port) : dir_(dir) {
    for (const char* d : {"www/chunked", "tmp", "tls"}) fs::create_directories(fs::path(dir) / d);
    make_certificates();
    storage::write_file_atomic(dir + "/www/len.bin", pattern(300000, 'L'));
    storage::write_file_atomic(dir + "/www/slow.bin", pattern(100000, 'S'));
    storage::write_file_atomic(dir + "/www/chunked/part.txt", pattern(20000, 'C'));
    storage::write_file_atomic(
        dir + "/www/chunked/page.html",
        "begin\n<!--# include file=\"part.txt\" -->\n<!--# include file=\"part.txt\" -->\nend\n");
    for (int attempt = 0; attempt < 5 && pid_ < 0; ++attempt) {
      port_ = free_port();
      tls_port_ = free_port();
      storage::write_file_atomic(dir + "/nginx.conf", config(silent_port));
      const pid_t pid = ::fork();
      if (pid == 0) {
        const std::string err = dir + "/error.log";
        ::execl(kNginx, kNginx, "-p", dir.c_str(), "-c", (dir + "/nginx.conf").c_str(), "-e", err.c_str(),
                static_cast<char*>(nullptr));
        ::_exit(127);
      }
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) break;  // it exited: the port was taken, try another
        if (can_connect(port_) && can_connect(tls_port_)) {
          pid_ = pid;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
  ~Nginx() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  bool running() const { return pid_ > 0; }
  std::string url(const std::string& path) const { return concat("http://127.0.0.1:", port_, path); }
  // The same files over TLS, with a certificate for 127.0.0.1 only, signed by ca_file().
  std::string tls_url(const std::string& path, const std::string& host = "127.0.0.1") const {
    return concat("https://", host, ":", tls_port_, path);
  }
  std::string ca_file() const { return dir_ + "/tls/ca.pem"; }
  std::string error_log() const {
    return fs::exists(dir_ + "/error.log") ? storage::read_file(dir_ + "/error.log") : "";
  }

 private:
  std::string config(uint16_t silent_port) const {
    const std::string t = dir_ + "/tmp";
    return concat("daemon off;\nmaster_process off;\npid ", dir_, "/nginx.pid;\nerror_log ", dir_,
                  "/error.log warn;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n",
                  "  client_body_temp_path ", t, "/body;\n  proxy_temp_path ", t, "/proxy;\n  fastcgi_temp_path ", t,
                  "/fastcgi;\n  uwsgi_temp_path ", t, "/uwsgi;\n  scgi_temp_path ", t, "/scgi;\n",
                  "  default_type application/octet-stream;\n  types { text/html html; text/plain txt; }\n",
                  "  server {\n    listen 127.0.0.1:", port_, ";\n    root ", dir_, "/www;\n",
                  // SSI output has no known length: nginx sends it chunked.
                  "    location /chunked/ { ssi on; }\n",
                  // 1000 bytes/s: every read gets data soon, the whole body takes 100 s.
                  "    location = /slow.bin { limit_rate 1000; }\n",
                  "    location = /stall { proxy_pass http://127.0.0.1:", silent_port, "; proxy_read_timeout 300s; }\n",
                  // 100 kB/s: a 300 kB body takes 3 s, so a fetcher with a 1 s deadline gets a third per attempt.
                  "    location /trickle/ { alias ", dir_, "/www/; limit_rate 100k; }\n  }\n",
                  "  server {\n    listen 127.0.0.1:", tls_port_, " ssl;\n    root ", dir_, "/www;\n",
                  "    ssl_certificate ", dir_, "/tls/server.pem;\n    ssl_certificate_key ", dir_,
                  "/tls/server.key;\n  }\n}\n");
  }

  // A CA, and a server certificate it signs for the IP address 127.0.0.1 (not for "localhost").
  void make_certificates() const {
    const std::string t = dir_ + "/tls";
    storage::write_file_atomic(t + "/ext.cnf", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string cmd =
        concat("cd ", t, " && openssl req -x509 ", ec, " -keyout ca.key -out ca.pem -days 2 -subj /CN=stride-test-ca",
               " && openssl req ", ec, " -keyout server.key -out server.csr -subj /CN=127.0.0.1",
               " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2",
               " -extfile ext.cnf -out server.pem) > ", t, "/openssl.log 2>&1");
    if (std::system(("(" + cmd).c_str()) != 0) {
      throw Error(concat("making the test certificates failed: ", storage::read_file(t + "/openssl.log")));
    }
  }

  std::string dir_;
  uint16_t port_ = 0, tls_port_ = 0;
  pid_t pid_ = -1;
};

// nginx is in scripts/setup.sh's packages: under CI its absence is a failure, not a skip.
#define REQUIRE_NGINX()                                                                      \
  do {                                                                                       \
    if (::access(kNginx, X_OK) != 0) {                                                       \
      const char* ci = std::getenv("CI");                                                    \
      if (ci && std::string(ci) == "true") FAIL() << kNginx << " is missing (Debian nginx)"; \
      GTEST_SKIP() << kNginx << " is missing (Debian nginx)";                                \
    }                                                                                        \
  } while (0)

// The raw response of a GET (headers and body as sent).
std::string raw_get(uint16_t port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = concat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string all;
  char buf[16384];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) all.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return all;
}

uint16_t port_of(const std::string& url) { return static_cast<uint16_t>(std::stoi(url.substr(url.rfind(':') + 1))); }

class HttpClientNginx : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_NGINX();
    silent_fd_ = silent_listener(&silent_port_);
    ASSERT_GE(silent_fd_, 0);
    nginx_ = std::make_unique<Nginx>(dir_.file("nginx"), silent_port_);
    ASSERT_TRUE(nginx_->running()) << "nginx did not start: " << nginx_->error_log();
  }
  void TearDown() override {
    nginx_.reset();
    if (silent_fd_ >= 0) ::close(silent_fd_);
  }
  ScratchDir dir_{"http-nginx"};
  int silent_fd_ = -1;
  uint16_t silent_port_ = 0;
  std::unique_ptr<Nginx> nginx_;
};

TEST_F(HttpClientNginx, ReadsAContentLengthBodyWhole) {
  const auto r = http_request("GET", nginx_->url("/len.bin"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/octet-stream");
  EXPECT_EQ(r.body, pattern(300000, 'L'));
  EXPECT_NE(raw_get(port_of(nginx_->url("")), "/len.bin").find("Content-Length: 300000"), std::string::npos);
  EXPECT_EQ(http_request("GET", nginx_->url("/missing")).status, 404);
}

TEST_F(HttpClientNginx, DecodesAChunkedBody) {
  const std::string raw = raw_get(port_of(nginx_->url("")), "/chunked/page.html");
  ASSERT_NE(raw.find("Transfer-Encoding: chunked"), std::string::npos) << raw.substr(0, 400);
  const auto r = http_request("GET", nginx_->url("/chunked/page.html"));
  EXPECT_EQ(r.status, 200);
  const std::string part = pattern(20000, 'C');
  EXPECT_EQ(r.body, "begin\n" + part + "\n" + part + "\nend\n");
}

// A body over the caller's limit is an error naming the URL, for a Content-Length body and a chunked one.
TEST_F(HttpClientNginx, ABodyOverTheLimitIsAnErrorNotATruncation) {
  for (const std::string path : {"/len.bin", "/chunked/page.html"}) {
    try {
      http_request("GET", nginx_->url(path), "", "", 10.0, /*max_body_bytes=*/10000);
      FAIL() << path << ": an over-limit body was returned";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("exceeds the limit of 10000 bytes"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(http_request("GET", nginx_->url("/len.bin"), "", "", 10.0, 300000).body.size(), 300000u);
}

// The deadline is per request: a server that sends a little every second (each read succeeds) and one that
// never answers both end in a timeout error, well before the trickle would finish (100 s).
TEST_F(HttpClientNginx, AStallingServerTimesOutWithinTheRequestDeadline) {
  for (const std::string path : {"/slow.bin", "/stall"}) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      http_request("GET", nginx_->url(path), "", "", 1.5);
      FAIL() << path << ": answered";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no complete answer within 1.5 s"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(8)) << path;
  }
}

// What nginx will not do: close after half of the announced Content-Length. The old client returned the half.
TEST(HttpClient, ABodyCutShortOfItsContentLengthIsAnError) {
  uint16_t port = 0;
  const int lfd = silent_listener(&port);
  ASSERT_GE(lfd, 0);
  std::thread server([lfd] {
    const int c = ::accept(lfd, nullptr, nullptr);
    char buf[4096];
    ::recv(c, buf, sizeof(buf), 0);
    const std::string answer = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + std::string(500, 'x');
    ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
    ::close(c);
  });
  try {
    http_request("GET", concat("http://127.0.0.1:", port, "/"));
    ADD_FAILURE() << "a truncated body was returned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("closed the connection before the whole answer"), std::string::npos)
        << e.what();
  }
  server.join();
  ::close(lfd);
  EXPECT_THROW(http_request("GET", "ftp://127.0.0.1/"), UsageError);
  EXPECT_THROW(http_request("GET", "http://127.0.0.1:port/"), UsageError);
}

// ---------------------------------------------------------------------------------------------------------
// The shard fetcher (data/http_fetch.h): TLS and range resume
// ---------------------------------------------------------------------------------------------------------
data::FetchOptions fetch_options(double timeout_s = 10.0) {
  data::FetchOptions o;
  o.timeout_s = timeout_s;
  o.retries = 8;
  o.backoff_s = 0.01;
  o.who = "rank 0";
  return o;
}

TEST_F(HttpClientNginx, FetchesOverTlsOnlyFromAServerItsTrustedCaVouchesFor) {
  auto o = fetch_options();
  o.ca_file = nginx_->ca_file();
  data::HttpFetcher trusted(o);
  EXPECT_EQ(trusted.get(nginx_->tls_url("/len.bin"), 1 << 20), pattern(300000, 'L'));
  EXPECT_EQ(trusted.get(nginx_->tls_url("/slow.bin"), 1 << 20), pattern(100000, 'S'));  // the kept connection
  EXPECT_EQ(trusted.retried(), 0u);
  // The system's store does not know the test CA: a clear error at once, naming the URL, no retries.
  data::HttpFetcher system_store(fetch_options());
  try {
    system_store.get(nginx_->tls_url("/len.bin"), 1 << 20);
    FAIL() << "an unknown CA was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 0: cannot fetch " + nginx_->tls_url("/len.bin")), std::string::npos) << what;
    EXPECT_NE(what.find("certificate does not verify"), std::string::npos) << what;
    EXPECT_NE(what.find("SSL_CERT_FILE"), std::string::npos) << what;
  }
  EXPECT_EQ(system_store.retried(), 0u);
  // A trusted certificate for another name: refused too (the host name is checked, not only the chain).
  data::HttpFetcher wrong_name(o);
  try {
    wrong_name.get(nginx_->tls_url("/len.bin", "localhost"), 1 << 20);
    FAIL() << "a certificate for 127.0.0.1 was accepted for localhost";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not name localhost"), std::string::npos) << e.what();
  }
  // Plain HTTP to the TLS port is an HTTP 400 from nginx, not a hang or a crash.
  data::HttpFetcher plain(fetch_options(5.0));
  EXPECT_THROW(plain.get(concat("http://127.0.0.1:", port_of(nginx_->tls_url("")), "/len.bin"), 1 << 20), Error);
}

// Note [Range resume]: every attempt times out with a third of the body; the retries ask for the rest only.
TEST_F(HttpClientNginx, AFetchCutShortResumesWithARangeRequest) {
  data::HttpFetcher f(fetch_options(1.0));
  EXPECT_EQ(f.get(nginx_->url("/trickle/len.bin"), 1 << 20), pattern(300000, 'L'));
  EXPECT_GE(f.retried(), 1u);
  // Without the kept part every attempt would start again from byte 0 and end after a third: no retry count
  // would do.
  EXPECT_GT(f.resumed_bytes(), 50000u) << "the retries fetched the object again from its start";
}

}  // namespace
}  // namespace stride::cluster
