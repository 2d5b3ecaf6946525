// How a rank and the coordinator prove to each other that they know the job token without sending it
// (protocol version 2, docs/cluster.md "Authentication"). Pure functions over OpenSSL's HMAC-SHA256 and the
// kernel's CSPRNG (getrandom); thread-safe.
//
// Note [Challenge-response]
// 1. The coordinator speaks first: Challenge{nonce_s}, 32 fresh random bytes per connection.
// 2. The rank answers Hello{rank, world, host, pid, step, attempt, nonce_c, proof}. The transcript T is both
//    nonces and every field of the Hello except the proofs, each length-prefixed; proof = HMAC(token, "hello" T).
//    A captured Hello is useless on another connection: its nonce_s differs.
// 3. The coordinator answers Welcome{proof = HMAC(token, "welcome" T resumed), resumed}: the rank knows it talks
//    to a holder of the token, not to whoever answered on that port. The labels keep one proof from being
//    reflected as the other.
// 4. The first accepted Hello of a rank (in one start of the job) fixes its session key K = HMAC(token, "session" T);
//    both sides derive it, it never travels. While the rank is live, another Hello for it (a reconnect) must carry
//    session_proof = HMAC(K, "resume" T'); a process that only knows the token cannot take over a live rank.
//    K is not rotated on reconnects, so a Welcome lost in a dropped connection cannot leave the two sides with
//    different keys (the rank keeps the key of the Hello it sent until a Welcome says otherwise).
// 5. Every frame after the Welcome carries a MAC under a key derived from K and this connection's nonces (Note
//    [Frame MACs] in cluster/wire.h): injected, altered, replayed or reflected frames close the connection.
// What this does not do: encrypt. Someone who can read the TCP traffic sees heartbeats and commands (no secret
// travels in them); hiding them needs TLS.
#pragma once

#include <cstddef>
#include <string>

#include "proto/cluster.pb.h"

namespace stride::cluster::auth {

constexpr size_t kNonceBytes = 32;

// `n` bytes from getrandom(2). Throws stride::Error when the kernel cannot supply them.
std::string random_bytes(size_t n);
// HMAC-SHA256 (RFC 2104) of `message` under `key`: 32 raw bytes.
std::string hmac_sha256(const std::string& key, const std::string& message);
// Equal length and bytes, in time that depends only on the length.
bool digest_equal(const std::string& a, const std::string& b);

// The bytes both proofs cover: the coordinator's nonce, then the Hello's fields (not its proofs).
std::string transcript(const std::string& server_nonce, const proto::Hello& hello);
std::string hello_proof(const std::string& token, const std::string& transcript);
std::string welcome_proof(const std::string& token, const std::string& transcript, bool resumed);
std::string session_key(const std::string& token, const std::string& transcript);
std::string resume_proof(const std::string& session_key, const std::string& transcript);

// Fills the Hello's client nonce (a fresh one), its proof and, when `session_key` is not empty, its session proof.
// Returns the transcript (for the Welcome's proof and the session key).
std::string sign_hello(proto::Hello* hello, const std::string& token, const std::string& server_nonce,
                       const std::string& session_key);

// Note [HTTP control requests]: POST /checkpoint and /stop prove the job token without sending it, so a status
// endpoint bound to a network address can be controlled across hosts over plain HTTP.
// 1. A request without a valid proof gets 401 with `WWW-Authenticate: Stride-HMAC nonce="N"`: 32 random bytes in
//    hex, single use, valid for 60 s (the server keeps at most 256 outstanding).
// 2. The client repeats it with `Authorization: Stride-HMAC nonce="N", mac="M"`, M = http_request_mac(token,
//    method, path, N). The server accepts each nonce once, so a captured request cannot be replayed, and the MAC
//    covers method and path, so a proof for /checkpoint does not stop the job.
// `Authorization: Bearer TOKEN` is still accepted on connections from a loopback address (the token then never
// leaves the machine); elsewhere it is refused.
std::string to_hex(const std::string& bytes);
// Lower-case hex of HMAC-SHA256(token, label || method || path || nonce), each length-prefixed.
std::string http_request_mac(const std::string& token, const std::string& method, const std::string& path,
                             const std::string& nonce);
// Splits `Stride-HMAC nonce="N", mac="M"` (either parameter may be missing: `Stride-HMAC` alone asks for a
// nonce). False when the header is not of that scheme or malformed.
bool parse_hmac_authorization(const std::string& header, std::string* nonce, std::string* mac);

}  // namespace stride::cluster::auth
