// libFuzzer harness over the HDE frame parser and decoder.
// Input: [shift selector][mode][record count: u16 LE][region pages][records...]
// Mode bit 0 set: the bytes after the 5-byte prefix are parsed as a whole
// frame (header included), exercising header validation. Otherwise a valid
// header with a correct checksum is built around them, so the fuzzer spends
// its time inside the record parser rather than failing the CRC.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "hde/decoder.h"
#include "hde/format.h"
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::hde;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const unsigned shift = kMinPageShift + data[0] % (kMaxPageShift - kMinPageShift + 1);
  const bool raw_frame = data[1] & 1;
  const uint32_t records = static_cast<uint32_t>(data[2] | (data[3] << 8));
  const size_t region_pages = 1 + data[4] % 32;
  data += 5;
  size -= 5;

  DecoderOptions opts;
  opts.page_size = 1u << shift;
  std::unique_ptr<Decoder> dec;
  if (Decoder::create(opts, &dec) != Status::kOk) abort();

  std::vector<uint8_t> frame;
  if (raw_frame) {
    frame.assign(data, data + size);
  } else {
    frame.resize(kHeaderSize + size);
    FrameHeader h;
    h.page_shift = static_cast<uint8_t>(shift);
    h.record_count = records;
    h.raw_len = h.payload_len = static_cast<uint32_t>(size);
    h.raw_crc = crc32c(0, data, size);
    write_header(h, frame.data());
    if (size) std::memcpy(frame.data() + kHeaderSize, data, size);
  }

  const size_t region_len = region_pages << shift;
  std::vector<uint8_t> region(region_len);
  for (size_t i = 0; i < region_len; i++) region[i] = static_cast<uint8_t>(i * 131 + 7);
  std::vector<uint8_t> before = region;
  DecodeCounts counts;
  Status s = dec->apply_frame(frame.data(), frame.size(), region.data(), region.size(), &counts);
  // A rejected frame must not have touched the region.
  if (s != Status::kOk && region != before) abort();
  if (s == Status::kOk && counts.pages != records && !raw_frame) abort();
  return 0;
}
