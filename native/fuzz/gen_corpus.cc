// Writes seed inputs for hde_decode_fuzz: real encoder output for a spread
// of page sizes and change shapes, in the harness's input format; and, given
// a second directory, seeds for amst_frame_fuzz: a HELLO, RDMA set-up steps
// with valid lane records, and DATA chunks.
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "hde/encoder.h"
#include "transport/frame.h"

using namespace dwcp::hde;

namespace {

// amst_frame_fuzz input: [mode][split seed] then a HELLO and chunks (the
// harness repairs CRCs in its non-raw mode, so they may be left zero).
void amst_seeds(const std::string& dir) {
  namespace tr = dwcp::transport;
  std::vector<uint8_t> wire(tr::kHelloSize);
  tr::Hello hello;
  tr::write_hello(hello, wire.data());
  auto chunk = [&](tr::ChunkHeader h, const std::vector<uint8_t>& payload) {
    h.payload_len = static_cast<uint32_t>(payload.size());
    uint8_t head[tr::kChunkHeaderSize];
    tr::write_chunk_header(h, head);
    wire.insert(wire.end(), head, head + sizeof(head));
    wire.insert(wire.end(), payload.begin(), payload.end());
  };
  std::vector<tr::LaneSetup> lanes(3);
  for (size_t i = 0; i < lanes.size(); i++) {
    lanes[i].endpoint.qpn = 100 + static_cast<uint32_t>(i);
    lanes[i].endpoint.mtu = 4096;
    lanes[i].ring_addr = 0x7f0000000000ull + (i << 24);
    lanes[i].ring_bytes = 4u << 20;
    lanes[i].slots = 64;
    lanes[i].slot_bytes = 4096;
  }
  std::vector<uint8_t> records;
  tr::write_lane_setups(lanes, &records);
  tr::ChunkHeader h;
  h.type = tr::ChunkType::kRdma;
  h.chunk_shift = 0;
  h.offset = static_cast<uint64_t>(tr::RdmaStep::kOffer);
  chunk(h, records);
  h.offset = static_cast<uint64_t>(tr::RdmaStep::kDown);
  h.message_id = 1;
  chunk(h, {});
  tr::ChunkHeader d;
  d.chunk_shift = 12;
  d.message_len = 6000;
  chunk(d, std::vector<uint8_t>(4096, 7));
  d.offset = 4096;
  chunk(d, std::vector<uint8_t>(6000 - 4096, 8));
  for (uint8_t mode : {2, 6}) {
    FILE* f = std::fopen((dir + "/seed-rdma-" + std::to_string(mode)).c_str(), "wb");
    if (!f) return;
    const uint8_t prefix[2] = {mode, 17};
    std::fwrite(prefix, 1, 2, f);
    std::fwrite(wire.data(), 1, wire.size(), f);
    std::fclose(f);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  std::mt19937_64 rng(42);
  int n = 0;
  for (unsigned shift : {9u, 12u, 13u}) {
    const uint32_t P = 1u << shift;
    const size_t pages = 8;
    EncoderOptions eo;
    eo.page_size = P;
    eo.cache_bytes = P * pages;
    std::unique_ptr<Encoder> enc;
    if (Encoder::create(eo, &enc) != dwcp::Status::kOk) return 1;
    std::vector<uint8_t> mem(P * pages);
    for (auto& b : mem) b = static_cast<uint8_t>(rng() % 4 ? 0 : rng());
    std::vector<uint64_t> pns{0, 1, 2, 3, 4, 5, 6, 7};
    for (int round = 0; round < 6; round++) {
      for (int c = 0; c < (round + 1) * 8; c++) mem[rng() % mem.size()] ^= static_cast<uint8_t>(rng());
      if (round == 3) std::memcpy(&mem[P], &mem[2 * P], P);
      if (round == 4) std::reverse(pns.begin(), pns.end());
      std::vector<uint8_t> frame(enc->max_encoded_size(pages));
      size_t w = 0;
      if (enc->encode(mem.data(), pns.data(), pages, frame.data(), frame.size(), &w) != dwcp::Status::kOk) return 1;
      for (int raw = 0; raw < 2; raw++) {
        std::string path = std::string(argv[1]) + "/seed-" + std::to_string(n++);
        FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) return 1;
        uint8_t prefix[5] = {static_cast<uint8_t>(shift - 9), static_cast<uint8_t>(raw),
                             static_cast<uint8_t>(pages), 0, static_cast<uint8_t>(pages - 1)};
        std::fwrite(prefix, 1, 5, f);
        if (raw) std::fwrite(frame.data(), 1, w, f);
        else std::fwrite(frame.data() + kHeaderSize, 1, w - kHeaderSize, f);
        std::fclose(f);
      }
    }
  }
  if (argc > 2) amst_seeds(argv[2]);
  std::printf("%d seeds\n", n);
  return 0;
}
