// SIMD kernels of the page codec. One implementation per instruction set,
// each in its own file and compiled with its own flags; `select_kernels`
// picks one at run time and tests can force any of them. All paths give
// bit-identical results (checked against the scalar reference in tests).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dwcp::hde {

enum class SimdPath : uint8_t { kScalar = 0, kSse2 = 1, kAvx2 = 2, kAvx512 = 3, kAuto = 255 };

struct Kernels {
  SimdPath path;
  const char* name;
  // True when all `n` bytes are zero. n is a multiple of 64.
  bool (*is_zero)(const uint8_t* p, size_t n);
  // Sets bit i of `bitmap` (n/512 words) when 8-byte word i of a and b differ,
  // and returns how many differ. Works 512 bytes at a time and stops early,
  // returning a value above `limit`, once more than `limit` words differ;
  // the bitmap is then incomplete. n is a multiple of 512.
  uint32_t (*diff_words)(const uint8_t* a, const uint8_t* b, size_t n, uint64_t* bitmap,
                         uint32_t limit);
  // dst[i] = a[i] ^ b[i]
  void (*xor_bytes)(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n);
  // dst[i] ^= src[i]
  void (*xor_into)(uint8_t* dst, const uint8_t* src, size_t n);
  // memcpy with streaming stores, for pages that will not be read again soon
  // (baseline cache entries, the receiver's memory): no read-for-ownership,
  // no eviction of hot data. Any alignment and length.
  void (*stream_copy)(uint8_t* dst, const uint8_t* src, size_t n);
  // Bitmap deltas. emit_words writes cur ^ ref for every 8-byte word whose
  // bit is set in `bitmap` (nwords bits), in order, and copies those words
  // of cur into `patch` when it is not null; returns the end of the output.
  // It may write up to 64 bytes past that end (callers leave the room).
  uint8_t* (*emit_words)(uint8_t* out, const uint8_t* cur, const uint8_t* ref, uint8_t* patch,
                         const uint64_t* bitmap, size_t nwords);
  // page word i ^= next input word, for every bit set in the little-endian
  // bitmap `bm`; returns the end of the input consumed. Reads no input beyond
  // popcount(bm) words.
  const uint8_t* (*apply_words)(uint8_t* page, const uint8_t* in, const uint8_t* bm, size_t nwords);
  // 64-bit content hash for duplicate detection (not cryptographic: every hit
  // is confirmed by a byte compare). n is a multiple of 64.
  uint64_t (*hash)(const uint8_t* p, size_t n);
};

const Kernels& scalar_kernels();
// The scalar bitmap routines, shared by the paths without a compress instruction.
uint8_t* emit_words_scalar(uint8_t* out, const uint8_t* cur, const uint8_t* ref, uint8_t* patch,
                           const uint64_t* bitmap, size_t nwords);
const uint8_t* apply_words_scalar(uint8_t* page, const uint8_t* in, const uint8_t* bm, size_t nwords);
const Kernels& sse2_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

// Whether this CPU can run `path`.
bool simd_path_supported(SimdPath path);
// The best supported path for kAuto, else `path` itself; nullptr when the CPU
// cannot run the requested path.
const Kernels* select_kernels(SimdPath path);
const char* simd_path_name(SimdPath path);
// Parses "scalar", "sse2", "avx2", "avx512", "auto"; false when unknown.
bool parse_simd_path(const char* name, SimdPath* out);

// Shared by every path so the hash is identical across instruction sets.
namespace hash_detail {
constexpr uint64_t kLaneKeys[8] = {
    0x9E3779B185EBCA87ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0xD6E8FEB86659FD93ull,
    0xFF51AFD7ED558CCDull, 0xC4CEB9FE1A85EC53ull, 0x27D4EB2F165667C5ull, 0x94D049BB133111EBull};
constexpr uint64_t kBlockStep = 0x2545F4914F6CDD1Dull;
inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDull;
  k ^= k >> 33;
  k *= 0xC4CEB9FE1A85EC53ull;
  k ^= k >> 33;
  return k;
}
inline uint64_t finish(const uint64_t acc[8], size_t n) {
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 8; i++) h = fmix64(h ^ acc[i]) + kLaneKeys[i];
  return fmix64(h);
}
}  // namespace hash_detail

}  // namespace dwcp::hde
