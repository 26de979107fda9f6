// The HDE codec driven from C++ alone (no Node), to separate the codec's own
// speed from the binding's: encode and decode of each workload against
// memcpy measured just before it. `make bench [MIB=256]`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "hde/decoder.h"
#include "hde/encoder.h"

using namespace dwcp::hde;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kBatch = 64;

template <class F>
double median_gbps(size_t bytes, int reps, F fn) {
  std::vector<double> t;
  for (int r = 0; r < reps; r++) {
    auto s = Clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(Clock::now() - s).count());
  }
  std::sort(t.begin(), t.end());
  return bytes / t[t.size() / 2] / 1e9;
}

void mutate(std::vector<uint8_t>& b, const std::string& w, std::mt19937_64& rng) {
  const size_t pages = b.size() / kPage;
  for (size_t p = 0; p < pages; p++) {
    uint8_t* pg = b.data() + p * kPage;
    if (w[0] == 'k') {
      const int k = std::stoi(w.substr(1));
      for (int i = 0; i < k; i++) {
        uint64_t v = rng();
        std::memcpy(pg + (rng() % (kPage / 8)) * 8, &v, 8);
      }
    } else if (w == "region512") {
      const size_t off = (rng() % ((kPage - 512) / 8 + 1)) * 8;
      for (size_t i = 0; i < 512; i += 8) {
        uint64_t v = rng();
        std::memcpy(pg + off + i, &v, 8);
      }
    } else if (w == "random") {
      for (size_t i = 0; i < kPage; i += 8) {
        uint64_t v = rng();
        std::memcpy(pg + i, &v, 8);
      }
    } else if (w == "zero") {
      std::memset(pg, 0, kPage);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256;
  const int reps = argc > 2 ? std::atoi(argv[2]) : 9;
  const size_t n = mib << 20, pages = n / kPage;
  std::mt19937_64 rng(1);
  std::vector<uint8_t> base(n), scratch(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&base[i], &v, 8);
  }
  std::vector<uint64_t> pns(pages);
  for (size_t i = 0; i < pages; i++) pns[i] = i;
  std::printf("{\"bench\":\"encode-native\",\"size_mib\":%zu,\"workloads\":{", mib);
  bool first = true;
  for (std::string w : {"k1", "k16", "k128", "region512", "unchanged", "random", "zero"}) {
    std::vector<uint8_t> old(base), neu(base);
    if (w == "zero") std::memset(old.data(), 0, n);
    mutate(neu, w, rng);
    EncoderOptions eo;
    eo.cache_bytes = n;
    std::unique_ptr<Encoder> enc, enc2;
    if (Encoder::create(eo, &enc) != dwcp::Status::kOk || Encoder::create(eo, &enc2) != dwcp::Status::kOk) return 1;
    std::vector<uint8_t> out(enc->max_encoded_size(kBatch));
    size_t wr = 0;
    auto pass = [&](Encoder& e, const std::vector<uint8_t>& src, std::vector<std::vector<uint8_t>>* keep) {
      for (size_t b = 0; b < pages; b += kBatch) {
        if (e.encode(src.data() + b * kPage, pns.data() + b, kBatch, out.data(), out.size(), &wr) != dwcp::Status::kOk) std::abort();
        if (keep) keep->emplace_back(out.begin(), out.begin() + static_cast<long>(wr));
      }
    };
    pass(*enc, old, nullptr);
    const double memcpy_gbps = median_gbps(n, reps, [&] { std::memcpy(scratch.data(), base.data(), n); });
    bool flip = false;
    const double enc_gbps = median_gbps(n, reps, [&] {
      pass(*enc, flip ? old : neu, nullptr);
      flip = !flip;
    });
    std::vector<std::vector<uint8_t>> fwd, back;
    pass(*enc2, old, nullptr);
    pass(*enc2, neu, &fwd);
    pass(*enc2, old, &back);
    std::unique_ptr<Decoder> dec;
    if (Decoder::create(DecoderOptions{}, &dec) != dwcp::Status::kOk) return 1;
    std::vector<uint8_t> region(old);
    DecodeCounts c;
    bool dflip = false;
    const double dec_gbps = median_gbps(n, reps, [&] {
      for (auto& f : dflip ? back : fwd) {
        if (dec->apply_frame(f.data(), f.size(), region.data(), n, &c) != dwcp::Status::kOk) std::abort();
      }
      dflip = !dflip;
    });
    if (region != (dflip ? neu : old)) std::abort();
    std::fprintf(stderr, "%-10s memcpy %6.2f  encode %6.2f GB/s (%.2fx)  decode %7.2f GB/s (%.2fx)\n", w.c_str(),
                 memcpy_gbps, enc_gbps, enc_gbps / memcpy_gbps, dec_gbps, dec_gbps / memcpy_gbps);
    std::printf("%s\"%s\":{\"memcpy_gbps\":%.2f,\"encode_gbps\":%.2f,\"decode_gbps\":%.2f}", first ? "" : ",", w.c_str(),
                memcpy_gbps, enc_gbps, dec_gbps);
    first = false;
  }
  std::printf("}}\n");
  return 0;
}
