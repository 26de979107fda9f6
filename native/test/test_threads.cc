// Encoders on several threads at once: the shared parts (kernel dispatch,
// CPU detection, CRC tables, the zero page) must be race-free under TSan.
#include <cstring>
#include <thread>

#include "hde/decoder.h"
#include "hde/encoder.h"
#include "test.h"

using namespace dwcp::hde;

TEST(threads_independent_codecs) {
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([t, &ok] {
      const uint32_t P = 4096;
      std::unique_ptr<Encoder> enc;
      std::unique_ptr<Decoder> dec;
      EncoderOptions eo;
      eo.cache_bytes = 16 * P;
      if (Encoder::create(eo, &enc) != dwcp::Status::kOk) return;
      if (Decoder::create(DecoderOptions{}, &dec) != dwcp::Status::kOk) return;
      std::vector<uint8_t> mem(16 * P), region(16 * P), frame(enc->max_encoded_size(16));
      std::vector<uint64_t> pns(16);
      for (uint64_t i = 0; i < 16; i++) pns[i] = i;
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      for (int round = 0; round < 50; round++) {
        for (int c = 0; c < 64; c++) mem[rng() % mem.size()] = static_cast<uint8_t>(rng());
        size_t n = 0;
        DecodeCounts counts;
        if (enc->encode(mem.data(), pns.data(), 16, frame.data(), frame.size(), &n) != dwcp::Status::kOk) return;
        if (dec->apply_frame(frame.data(), n, region.data(), region.size(), &counts) != dwcp::Status::kOk) return;
      }
      ok[t] = region == mem;
    });
  }
  for (auto& th : threads) th.join();
  for (int v : ok) CHECK(v == 1);
}
