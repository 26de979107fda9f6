// HDE wire format: a 32-byte frame header followed by the record stream
// (possibly compressed). docs/hde-wire-format.md is the normative description;
// keep the two in step.
#pragma once
#include <cstddef>
#include <cstdint>

#include "util/status.h"

namespace dwcp::hde {

constexpr uint32_t kMagic = 0x31454448u;  // "HDE1" read as little-endian u32
constexpr uint8_t kVersion = 1;
constexpr size_t kHeaderSize = 32;
constexpr unsigned kMinPageShift = 9;   // 512 B
constexpr unsigned kMaxPageShift = 16;  // 64 KiB
constexpr uint32_t kMaxRecords = 1u << 20;
constexpr uint64_t kMaxRawLen = 1ull << 31;

enum class Codec : uint8_t { kNone = 0, kLz4 = 1, kZstd = 2 };

// Record kinds, the top three bits of a record's tag byte.
enum class Kind : uint8_t {
  kZero = 0,         // page is all zeros
  kFull = 1,         // page bytes follow verbatim
  kDup = 2,          // copy of another page the receiver holds
  kDeltaWords = 3,   // XOR runs in 8-byte units, count in aux (15 = varint follows)
  kDeltaBytes = 4,   // XOR runs in byte units, count as above
  kDeltaBitmap = 5,  // changed-word bitmap, then the XOR of each changed word
  kDeltaWord1 = 6,   // exactly one XOR run in 8-byte units, packed into aux + 1-2 bytes
};
constexpr unsigned kKindCount = 7;

constexpr uint8_t kTagSeqBit = 0x10;  // page number = previous + 1 (first: 0)
constexpr uint8_t kAuxMask = 0x0f;
constexpr uint8_t kAuxCountEscape = 15;

struct FrameHeader {
  uint8_t version = kVersion;
  Codec codec = Codec::kNone;
  uint8_t page_shift = 12;
  uint8_t flags = 0;
  uint32_t record_count = 0;
  uint32_t raw_len = 0;      // record stream bytes, uncompressed
  uint32_t payload_len = 0;  // bytes after the header
  uint32_t raw_crc = 0;      // CRC32C of the uncompressed record stream
};

void write_header(const FrameHeader& h, uint8_t out[kHeaderSize]);
// Validates magic, version, header CRC, field ranges and that `len` holds
// exactly header + payload. Does not look at the payload.
[[nodiscard]] Status parse_header(const uint8_t* buf, size_t len, FrameHeader* out);
// The same checks without requiring the payload to be present.
[[nodiscard]] Status parse_header_only(const uint8_t* buf, size_t len, FrameHeader* out);

// Layout of run tokens, derived from the page size; shared by both ends.
struct TokenLayout {
  unsigned pos_bits;     // bits of the gap field
  unsigned bytes;        // token width in bytes
  uint32_t max_len;      // longest run one token carries (a power of two)
  unsigned max_len_log2;
};

struct PageGeometry {
  uint32_t page_size;
  unsigned page_shift;
  uint32_t words;          // 8-byte words per page
  TokenLayout word_token;  // kDeltaWords
  TokenLayout byte_token;  // kDeltaBytes
  unsigned word1_extra;    // bytes after the tag in kDeltaWord1
  uint32_t word1_max_len;  // longest run kDeltaWord1 carries, in words

  explicit PageGeometry(unsigned shift);
};


}  // namespace dwcp::hde
