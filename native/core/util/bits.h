// Bit helpers. popcount64 avoids a libgcc call: the core is built for
// baseline x86-64 (no POPCNT), where __builtin_popcount becomes a call.
#pragma once
#include <cstdint>
#include <cstring>

namespace dwcp {

inline unsigned popcount64(uint64_t x) {
#if defined(__POPCNT__)
  return static_cast<unsigned>(__builtin_popcountll(x));
#else
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((x * 0x0101010101010101ull) >> 56);
#endif
}

// Unaligned little-endian 8-byte load (compiles to one mov).
inline uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

}  // namespace dwcp
