// libFuzzer harness over the AMST stream reader and reassembler, and the
// RDMA set-up records some chunks carry.
// Input: [mode][split seed][bytes...]. Mode bit 2 set: large payloads are
// read in place through the direct window. Mode bit 0 set: the bytes go to the
// reader as they are (exercising checksum and magic checks). Otherwise the
// bytes are read as a sequence of chunk headers and payloads whose CRCs the
// harness repairs first, so the fuzzer reaches the field checks and the
// reassembler. Either way the bytes are fed in pieces of varying size.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "transport/frame.h"
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::transport;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const bool raw = data[0] & 1;
  const bool hello = data[0] & 2;
  uint32_t split = data[1] * 2654435761u + 1;
  data += 2;
  size -= 2;

  std::vector<uint8_t> wire(data, data + size);
  if (!raw) {
    size_t pos = hello ? kHelloSize : 0;
    if (hello && wire.size() >= kHelloSize) {
      // Keep whatever fields the fuzzer chose, but make magic and CRC valid.
      wire[0] = 'A', wire[1] = 'M', wire[2] = 'S', wire[3] = '1';
      const uint32_t c = crc32c(0, wire.data(), 36);
      std::memcpy(wire.data() + 36, &c, 4);
    }
    while (pos + kChunkHeaderSize <= wire.size()) {
      uint8_t* h = wire.data() + pos;
      uint32_t plen;
      std::memcpy(&plen, h + 4, 4);
      plen %= 70000;  // keep declared payloads within reach of the input
      std::memcpy(h + 4, &plen, 4);
      const size_t avail = wire.size() - pos - kChunkHeaderSize;
      const uint32_t pc = crc32c(0, h + kChunkHeaderSize, plen <= avail ? plen : avail);
      std::memcpy(h + 32, &pc, 4);
      const uint32_t hc = crc32c(0, h, 36);
      std::memcpy(h + 36, &hc, 4);
      pos += kChunkHeaderSize + plen;
    }
  }

  Limits lim;
  lim.max_message = 1 << 20;
  lim.max_pending_bytes = 4 << 20;
  lim.max_out_of_order = 64;
  Reassembler re(lim);
  uint64_t next_id = 0;
  // Mode bit 2: large payloads are placed straight into their message, as
  // the engine's readv does, through the reader's direct window.
  const bool place = data[-2] & 4;
  StreamReader reader(
      lim, hello, [](const Hello&) { return Status::kOk; },
      [&](const ChunkHeader& h, const uint8_t* payload) {
        if (h.type == ChunkType::kRdma && h.payload_len) {
          // RDMA set-up records: whatever parses must be within what a
          // channel accepts, and must survive a round trip.
          std::vector<LaneSetup> lanes;
          if (parse_lane_setups(payload, h.payload_len, &lanes) == Status::kOk) {
            if (lanes.empty() || lanes.size() > kMaxLanes) abort();
            for (const auto& l : lanes) {
              if (l.slots < 4 || l.ring_bytes < (64u << 10) || l.endpoint.qpn == 0) abort();
            }
            std::vector<uint8_t> again;
            write_lane_setups(lanes, &again);
            std::vector<LaneSetup> back;
            if (parse_lane_setups(again.data(), again.size(), &back) != Status::kOk || back.size() != lanes.size()) abort();
          }
        }
        if (h.type != ChunkType::kData) return Status::kOk;
        bool done, dup;
        std::vector<Received> ready;
        Status s = re.add(h, payload, &done, &ready, &dup);
        for (auto& r : ready) {
          if (r.id != next_id++) abort();  // released in id order
          if (r.data.own.empty()) abort();
          // A packed message's layout is checked as the engine does; a pack
          // that passes must be walkable to its last byte.
          uint32_t count = 0;
          if ((r.flags & kFlagPacked) && check_pack(r.data.own.data(), r.data.own.size(), &count) == Status::kOk) {
            size_t at = 4;
            for (uint32_t i = 0; i < count; i++) {
              uint32_t len;
              std::memcpy(&len, r.data.own.data() + at, 4);
              at += 4 + len;
            }
            if (at != r.data.own.size()) abort();
          }
        }
        return s;
      },
      place ? StreamReader::Place([&](const ChunkHeader& h, uint8_t** dst) { return re.reserve(h, dst); }) : nullptr);
  size_t pos = 0;
  Status last = Status::kOk;
  while (pos < wire.size()) {
    split = split * 1103515245u + 12345u;
    size_t n = 1 + (split >> 16) % 5000;
    if (n > wire.size() - pos) n = wire.size() - pos;
    uint8_t* dst;
    size_t room;
    Status s;
    if (reader.direct_window(&dst, &room)) {
      n = n < room ? n : room;
      std::memcpy(dst, wire.data() + pos, n);
      s = reader.direct_filled(n);
    } else {
      s = reader.feed(wire.data() + pos, n);
    }
    // Once a stream has failed it must stay failed.
    if (last != Status::kOk && s != last) abort();
    last = s;
    pos += n;
  }
  if (re.pending_bytes() > lim.max_pending_bytes) abort();
  return 0;
}
