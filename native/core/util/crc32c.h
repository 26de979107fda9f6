// CRC32C (Castagnoli), the checksum of every HDE frame and transport chunk.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dwcp {

// Extends `crc` (0 to start) over `data`. Uses the SSE4.2 instruction when the
// CPU has it and a table otherwise; both give identical results.
uint32_t crc32c(uint32_t crc, const void* data, size_t len);

// Table-driven version, exposed so tests can compare it with the hardware one.
uint32_t crc32c_portable(uint32_t crc, const void* data, size_t len);
uint32_t crc32c_hw(uint32_t crc, const void* data, size_t len);       // requires SSE4.2
uint32_t crc32c_vpclmul(uint32_t crc, const void* data, size_t len);  // requires AVX-512F + VPCLMULQDQ

bool crc32c_hw_available();
bool crc32c_vpclmul_available();
// The implementation crc32c() uses: "vpclmul", "sse4.2" or "table".
const char* crc32c_path();

}  // namespace dwcp
