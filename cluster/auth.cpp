#include "cluster/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace stride::cluster::auth {
namespace {

// Distinct labels per use: a proof made for one purpose is never valid for another.
constexpr char kHelloLabel[] = "stride v2 hello";
constexpr char kWelcomeLabel[] = "stride v2 welcome";
constexpr char kSessionLabel[] = "stride v2 session";
constexpr char kResumeLabel[] = "stride v2 resume";
constexpr char kHttpLabel[] = "stride v2 http";

void put_u64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}

// Length-prefixed, so no two different field lists give the same bytes.
void put_bytes(std::string* out, const std::string& s) {
  put_u64(out, s.size());
  out->append(s);
}

std::string labelled(const char* label, const std::string& transcript) {
  std::string m;
  put_bytes(&m, label);
  m.append(transcript);
  return m;
}

}  // namespace

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw Error(concat("getrandom: ", std::strerror(errno)));
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string hmac_sha256(const std::string& key, const std::string& message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &len)) {
    throw Error("HMAC-SHA256 failed (OpenSSL)");
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

bool digest_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string transcript(const std::string& server_nonce, const proto::Hello& h) {
  std::string t;
  put_bytes(&t, server_nonce);
  put_bytes(&t, h.client_nonce());
  put_u64(&t, h.rank());
  put_u64(&t, h.world_size());
  put_bytes(&t, h.host());
  put_u64(&t, h.pid());
  put_u64(&t, h.step());
  put_u64(&t, h.attempt());
  return t;
}

std::string hello_proof(const std::string& token, const std::string& transcript) {
  return hmac_sha256(token, labelled(kHelloLabel, transcript));
}

std::string welcome_proof(const std::string& token, const std::string& transcript, bool resumed) {
  return hmac_sha256(token, labelled(kWelcomeLabel, transcript) + (resumed ? '\1' : '\0'));
}

std::string session_key(const std::string& token, const std::string& transcript) {
  return hmac_sha256(token, labelled(kSessionLabel, transcript));
}

std::string resume_proof(const std::string& key, const std::string& transcript) {
  return hmac_sha256(key, labelled(kResumeLabel, transcript));
}

std::string sign_hello(proto::Hello* hello, const std::string& token, const std::string& server_nonce,
                       const std::string& key) {
  hello->set_client_nonce(random_bytes(kNonceBytes));
  const std::string t = transcript(server_nonce, *hello);
  hello->set_proof(hello_proof(token, t));
  if (key.empty()) {
    hello->clear_session_proof();
  } else {
    hello->set_session_proof(resume_proof(key, t));
  }
  return t;
}

std::string to_hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string http_request_mac(const std::string& token, const std::string& method, const std::string& path,
                             const std::string& nonce) {
  std::string t;
  put_bytes(&t, method);
  put_bytes(&t, path);
  put_bytes(&t, nonce);
  return to_hex(hmac_sha256(token, labelled(kHttpLabel, t)));
}

bool parse_hmac_authorization(const std::string& header, std::string* nonce, std::string* mac) {
  static const std::string scheme = "Stride-HMAC";
  if (header.compare(0, scheme.size(), scheme) != 0) return false;
  if (header.size() > scheme.size() && header[scheme.size()] != ' ') return false;
  nonce->clear();
  mac->clear();
  // Parameters: name="value" pairs separated by commas and spaces; values are hex, so they hold no quotes.
  size_t i = scheme.size();
  while (i < header.size()) {
    while (i < header.size() && (header[i] == ' ' || header[i] == ',')) ++i;
    if (i >= header.size()) break;
    const size_t eq = header.find('=', i);
    if (eq == std::string::npos || eq + 1 >= header.size() || header[eq + 1] != '"') return false;
    const size_t close = header.find('"', eq + 2);
    if (close == std::string::npos) return false;
    const std::string name = header.substr(i, eq - i), value = header.substr(eq + 2, close - eq - 2);
    if (name == "nonce") {
      *nonce = value;
    } else if (name == "mac") {
      *mac = value;
    } else {
      return false;
    }
    i = close + 1;
  }
  return true;
}

}  // namespace stride::cluster::auth
