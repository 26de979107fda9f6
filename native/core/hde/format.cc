#include "hde/format.h"

#include <cstring>

#include "util/crc32c.h"

namespace dwcp::hde {
namespace {

void put_u32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

TokenLayout token_layout(unsigned pos_bits) {
  TokenLayout t;
  t.pos_bits = pos_bits;
  t.bytes = pos_bits <= 12 ? 2 : 3;
  t.max_len_log2 = t.bytes * 8 - pos_bits;
  t.max_len = 1u << t.max_len_log2;
  return t;
}

}  // namespace

PageGeometry::PageGeometry(unsigned shift)
    : page_size(1u << shift),
      page_shift(shift),
      words(1u << (shift - 3)),
      word_token(token_layout(shift - 3)),
      byte_token(token_layout(shift)),
      word1_extra(shift - 3 <= 9 ? 1 : 2),
      word1_max_len(1u << ((shift - 3 <= 9 ? 12 : 20) - (shift - 3))) {}

void write_header(const FrameHeader& h, uint8_t out[kHeaderSize]) {
  put_u32(out, kMagic);
  out[4] = h.version;
  out[5] = static_cast<uint8_t>(h.codec);
  out[6] = h.page_shift;
  out[7] = h.flags;
  put_u32(out + 8, h.record_count);
  put_u32(out + 12, h.raw_len);
  put_u32(out + 16, h.payload_len);
  put_u32(out + 20, h.raw_crc);
  put_u32(out + 24, 0);
  put_u32(out + 28, crc32c(0, out, 28));
}

Status parse_header_only(const uint8_t* buf, size_t len, FrameHeader* out) {
  if (len < kHeaderSize) return Status::kTruncated;
  if (get_u32(buf) != kMagic) return Status::kBadMagic;
  if (get_u32(buf + 28) != crc32c(0, buf, 28)) return Status::kHeaderChecksum;
  if (buf[4] != kVersion) return Status::kUnsupportedVersion;
  FrameHeader h;
  h.version = buf[4];
  if (buf[5] > static_cast<uint8_t>(Codec::kZstd)) return Status::kUnknownCodec;
  h.codec = static_cast<Codec>(buf[5]);
  h.page_shift = buf[6];
  h.flags = buf[7];
  h.record_count = get_u32(buf + 8);
  h.raw_len = get_u32(buf + 12);
  h.payload_len = get_u32(buf + 16);
  h.raw_crc = get_u32(buf + 20);
  if (h.page_shift < kMinPageShift || h.page_shift > kMaxPageShift) return Status::kCorrupt;
  if (h.flags != 0 || get_u32(buf + 24) != 0) return Status::kCorrupt;
  if (h.record_count > kMaxRecords || h.raw_len > kMaxRawLen) return Status::kLimitExceeded;
  // Every record is at least one byte and at most tag + varint + page.
  const uint64_t max_raw = static_cast<uint64_t>(h.record_count) * ((1u << h.page_shift) + 11);
  if (h.raw_len < h.record_count || h.raw_len > max_raw) return Status::kCorrupt;
  if (h.codec == Codec::kNone && h.payload_len != h.raw_len) return Status::kCorrupt;
  *out = h;
  return Status::kOk;
}

Status parse_header(const uint8_t* buf, size_t len, FrameHeader* out) {
  FrameHeader h;
  Status s = parse_header_only(buf, len, &h);
  if (s != Status::kOk) return s;
  if (len - kHeaderSize < h.payload_len) return Status::kTruncated;
  if (len - kHeaderSize > h.payload_len) return Status::kCorrupt;
  *out = h;
  return Status::kOk;
}

}  // namespace dwcp::hde
