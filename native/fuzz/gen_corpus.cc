// Writes seed inputs for hde_decode_fuzz: real encoder output for a spread
// of page sizes and change shapes, in the harness's input format.
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "hde/encoder.h"

using namespace dwcp::hde;

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
  std::printf("%d seeds\n", n);
  return 0;
}
