#include "data/tar.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "common/error.h"
#include "storage/file_io.h"

namespace stride::data {
namespace {

void put_octal(char* field, size_t width, uint64_t value) {
  // width-1 octal digits, zero padded, then NUL.
  std::snprintf(field, width, "%0*llo", static_cast<int>(width - 1), static_cast<unsigned long long>(value));
}

uint64_t parse_number(const char* field, size_t width, bool* ok) {
  *ok = true;
  if (static_cast<unsigned char>(field[0]) & 0x80) {  // GNU base-256 for large sizes
    uint64_t v = static_cast<unsigned char>(field[0]) & 0x7f;
    for (size_t i = 1; i < width; ++i) v = (v << 8) | static_cast<unsigned char>(field[i]);
    return v;
  }
  uint64_t v = 0;
  size_t i = 0;
  while (i < width && (field[i] == ' ' || field[i] == '\0')) ++i;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i) {
    v = v * 8 + static_cast<uint64_t>(field[i] - '0');
  }
  for (; i < width; ++i) {
    if (field[i] != ' ' && field[i] != '\0') *ok = false;
  }
  return v;
}

std::string field_string(const char* field, size_t width) { return std::string(field, strnlen(field, width)); }

bool header_checksum_ok(const unsigned char* h) {
  bool ok;
  const uint64_t stored = parse_number(reinterpret_cast<const char*>(h) + 148, 8, &ok);
  if (!ok) return false;
  uint64_t unsigned_sum = 0;
  int64_t signed_sum = 0;
  for (size_t i = 0; i < kTarBlock; ++i) {
    const bool in_field = i >= 148 && i < 156;
    unsigned_sum += in_field ? ' ' : h[i];
    signed_sum += in_field ? ' ' : static_cast<signed char>(h[i]);
  }
  return stored == unsigned_sum || static_cast<int64_t>(stored) == signed_sum;
}

}  // namespace

std::string ustar_header(const std::string& name, uint64_t size) {
  char h[kTarBlock];
  std::memset(h, 0, sizeof(h));
  std::string prefix, base = name;
  if (name.size() > 100) {
    const size_t cut = name.rfind('/', 155);
    if (cut == std::string::npos || name.size() - cut - 1 > 100 || cut == 0) {
      throw Error(concat("tar member name too long for ustar (", name.size(), " bytes): ", name));
    }
    prefix = name.substr(0, cut);
    base = name.substr(cut + 1);
  }
  if (size >= (uint64_t{1} << 33)) throw Error(concat("tar member ", name, " is larger than 8 GiB"));
  std::memcpy(h, base.data(), base.size());
  put_octal(h + 100, 8, 0644);
  put_octal(h + 108, 8, 0);
  put_octal(h + 116, 8, 0);
  put_octal(h + 124, 12, size);
  put_octal(h + 136, 12, 0);
  h[156] = '0';
  std::memcpy(h + 257, "ustar", 6);
  std::memcpy(h + 263, "00", 2);
  std::memcpy(h + 345, prefix.data(), prefix.size());
  std::memset(h + 148, ' ', 8);
  uint64_t sum = 0;
  for (unsigned char c : std::string(h, kTarBlock)) sum += c;
  std::snprintf(h + 148, 8, "%06llo", static_cast<unsigned long long>(sum));
  h[155] = ' ';
  return std::string(h, kTarBlock);
}

TarWriter::TarWriter(const std::string& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "wb");
  if (!file_) throw Error(concat("cannot create ", path, ": ", std::strerror(errno)));
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

TarWriter::~TarWriter() {
  if (file_) std::fclose(file_);
}

void TarWriter::write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, file_) != n) {
    throw Error(concat("write to ", path_, " failed at offset ", offset_, ": ", std::strerror(errno)));
  }
  offset_ += n;
}

uint64_t TarWriter::add(const std::string& name, const void* data, uint64_t size) {
  STRIDE_CHECK(file_ != nullptr, "TarWriter::add after finish");
  const std::string header = ustar_header(name, size);
  write(header.data(), header.size());
  const uint64_t at = offset_;
  write(data, size);
  static const char zeros[kTarBlock] = {};
  write(zeros, (kTarBlock - size % kTarBlock) % kTarBlock);
  return at;
}

uint64_t TarWriter::finish() {
  STRIDE_CHECK(file_ != nullptr, "TarWriter::finish called twice");
  static const char zeros[2 * kTarBlock] = {};
  write(zeros, sizeof(zeros));
  if (std::fflush(file_) != 0 || ::fsync(fileno(file_)) != 0) {
    throw Error(concat("flush of ", path_, " failed: ", std::strerror(errno)));
  }
  const int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) throw Error(concat("close of ", path_, " failed: ", std::strerror(errno)));
  return offset_;
}

std::vector<TarMember> scan_tar(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(concat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st {};
  ::fstat(fd, &st);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  std::vector<TarMember> members;
  std::string long_name;      // from a GNU 'L' or pax 'x' record, applies to the next member
  bool has_pax_size = false;  // a pax 'x' record's size=, which overrides the next member's header size field
  uint64_t pax_size = 0;
  uint64_t offset = 0;
  unsigned char h[kTarBlock];
  auto fail = [&](const std::string& why) {
    ::close(fd);
    throw Error(concat(path, ": ", why, " at offset ", offset));
  };
  while (true) {
    if (offset + kTarBlock > file_size || !storage::pread_full(fd, h, kTarBlock, offset)) {
      fail("truncated tar (no end-of-archive marker)");
    }
    bool zero = true;
    for (unsigned char c : h) zero = zero && c == 0;
    if (zero) break;
    if (!header_checksum_ok(h)) fail("bad tar header checksum");
    bool ok;
    const char type = static_cast<char>(h[156]);
    uint64_t size = parse_number(reinterpret_cast<const char*>(h) + 124, 12, &ok);
    if (!ok) fail("malformed tar member size");
    // pax size= applies to the member header that follows the 'x' record (members over 8 GiB, or writers that
    // put the size only there), not to another extended header.
    if (has_pax_size && type != 'x' && type != 'g' && type != 'L') {
      size = pax_size;
      has_pax_size = false;
    }
    const uint64_t data = offset + kTarBlock;
    if (size > file_size || data + size > file_size) {
      fail(concat("tar member of ", size, " bytes runs past the end of the file"));
    }
    std::string name = field_string(reinterpret_cast<const char*>(h), 100);
    const std::string prefix = field_string(reinterpret_cast<const char*>(h) + 345, 155);
    if (std::memcmp(h + 257, "ustar", 5) == 0 && !prefix.empty()) name = prefix + "/" + name;
    if (type == 'L' || type == 'x') {
      std::string payload(size, '\0');
      if (!storage::pread_full(fd, payload.data(), size, data)) fail("cannot read extended header");
      if (type == 'L') {
        long_name = payload.c_str();
      } else {
        // pax records: "<len> <key>=<value>\n", <len> counting the whole record.
        size_t pos = 0;
        while (pos < payload.size() && payload[pos] != '\0') {
          const size_t sp = payload.find(' ', pos);
          size_t len = 0;
          bool framed = sp != std::string::npos && sp > pos;
          for (size_t i = pos; framed && i < sp; ++i) {
            framed = payload[i] >= '0' && payload[i] <= '9' && len <= payload.size();
            len = len * 10 + static_cast<size_t>(payload[i] - '0');
          }
          framed = framed && len > sp - pos + 1 && pos + len <= payload.size() && payload[pos + len - 1] == '\n';
          if (!framed) fail(concat("malformed pax extended header record at byte ", pos, " of the record block"));
          const std::string record = payload.substr(sp + 1, pos + len - sp - 2);
          if (record.rfind("path=", 0) == 0) {
            long_name = record.substr(5);
          } else if (record.rfind("size=", 0) == 0) {
            const std::string value = record.substr(5);
            bool valid = !value.empty() && value.size() <= 20;
            uint64_t v = 0;
            for (char c : value) {
              const uint64_t digit = static_cast<uint64_t>(c - '0');
              valid = valid && c >= '0' && c <= '9' && v <= (UINT64_MAX - digit) / 10;
              if (valid) v = v * 10 + digit;
            }
            if (!valid) fail(concat("malformed pax size record 'size=", value, "'"));
            has_pax_size = true;
            pax_size = v;
          }
          pos += len;
        }
      }
    } else if (type == '0' || type == '\0' || type == '7') {
      members.push_back({long_name.empty() ? name : long_name, data, size});
      long_name.clear();
    } else {
      long_name.clear();  // directories, links, global headers: not samples
    }
    offset = data + (size + kTarBlock - 1) / kTarBlock * kTarBlock;
  }
  ::close(fd);
  return members;
}

void split_key(const std::string& member_name, std::string* key, std::string* ext) {
  const size_t slash = member_name.rfind('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  const size_t dot = member_name.find('.', base);
  if (dot == std::string::npos) {
    *key = member_name;
    ext->clear();
  } else {
    *key = member_name.substr(0, dot);
    *ext = member_name.substr(dot + 1);
  }
}

}  // namespace stride::data
