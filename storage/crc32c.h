// CRC32C (Castagnoli), as used by the dataset index, dataset samples and checkpoint files. Hardware instruction when
// the CPU has SSE4.2, table otherwise; both give identical results. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace stride::storage {

// crc32c(data, n) of a whole buffer; pass a previous result as `crc` to continue a running checksum.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace stride::storage
