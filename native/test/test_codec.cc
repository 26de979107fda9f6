// Encoder + decoder round trips on every page size and SIMD path, record
// sizes, cache eviction, and hostile frames.
#include <cstring>

#include "hde/decoder.h"
#include "hde/encoder.h"
#include "test.h"
#include "util/crc32c.h"

using namespace dwcp;
using namespace dwcp::hde;
namespace test = dwcp::test;

namespace {

struct Pair {
  std::unique_ptr<Encoder> enc;
  std::unique_ptr<Decoder> dec;
  std::vector<uint8_t> region;  // the receiver's memory
  std::vector<uint8_t> frame;

  Pair(uint32_t page, uint64_t cache, size_t pages, SimdPath simd) : region(page * pages) {
    EncoderOptions eo;
    eo.page_size = page;
    eo.cache_bytes = cache;
    eo.simd = simd;
    CHECK(Encoder::create(eo, &enc) == Status::kOk);
    DecoderOptions d;
    d.page_size = page;
    d.simd = simd;
    CHECK(Decoder::create(d, &dec) == Status::kOk);
  }

  // Encodes the listed pages of `src` and applies the frame to `region`.
  size_t sync(const std::vector<uint8_t>& src, const std::vector<uint64_t>& pns) {
    const uint32_t P = enc->geometry().page_size;
    std::vector<uint8_t> batch(pns.size() * P);
    for (size_t i = 0; i < pns.size(); i++) std::memcpy(&batch[i * P], &src[pns[i] * P], P);
    frame.resize(enc->max_encoded_size(pns.size()));
    size_t written = 0;
    CHECK(enc->encode(batch.data(), pns.data(), pns.size(), frame.data(), frame.size(), &written) == Status::kOk);
    frame.resize(written);
    DecodeCounts c;
    Status s = dec->apply_frame(frame.data(), frame.size(), region.data(), region.size(), &c);
    if (s != Status::kOk) std::fprintf(stderr, "apply: %s (page %u)\n", status_name(s), P);
    CHECK(s == Status::kOk);
    CHECK_EQ(c.pages, pns.size());
    return written;
  }
};

std::vector<uint64_t> all_pages(size_t n) {
  std::vector<uint64_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = i;
  return v;
}

// Mutates `mem` in one of the shapes VM memory takes between two passes.
void mutate(std::vector<uint8_t>& mem, uint32_t P, std::mt19937_64& rng, int shape) {
  const size_t pages = mem.size() / P;
  for (size_t pg = 0; pg < pages; pg++) {
    uint8_t* p = &mem[pg * P];
    switch ((shape + pg) % 9) {
      case 0: break;  // unchanged
      case 1: {       // k random 8-byte words
        size_t k = 1 + rng() % 40;
        for (size_t i = 0; i < k; i++) {
          uint64_t v = rng();
          std::memcpy(p + (rng() % (P / 8)) * 8, &v, 8);
        }
        break;
      }
      case 2: {  // one region at an arbitrary byte offset
        size_t len = 1 + rng() % (P / 4), off = rng() % (P - len);
        for (size_t i = 0; i < len; i++) p[off + i] = static_cast<uint8_t>(rng());
        break;
      }
      case 3:
        for (size_t i = 0; i < P; i++) p[i] = static_cast<uint8_t>(rng());
        break;
      case 4: std::memset(p, 0, P); break;
      case 5: std::memcpy(p, &mem[((pg + 1) % pages) * P], P); break;  // duplicate
      case 6: p[rng() % P] ^= 0x40; break;                               // one bit
      case 7:  // dense word changes
        for (size_t w = 0; w < P / 8; w++) {
          if (rng() % 4 == 0) p[w * 8 + rng() % 8] ^= 1;
        }
        break;
      case 8:  // long run
        std::memset(p + P / 8, static_cast<int>(rng()), P / 2);
        break;
    }
  }
}

}  // namespace

TEST(codec_round_trip_all_sizes_and_paths) {
  for (uint32_t P : {512u, 4096u, 8192u, 65536u}) {
    const size_t pages = P == 65536 ? 12 : 48;
    std::vector<std::unique_ptr<Pair>> pairs;
    for (SimdPath s : {SimdPath::kScalar, SimdPath::kSse2, SimdPath::kAvx2, SimdPath::kAvx512}) {
      if (simd_path_supported(s)) pairs.emplace_back(new Pair(P, P * pages, pages, s));
    }
    std::mt19937_64 rng(test::seed() + P);
    std::vector<uint8_t> mem(P * pages);
    for (auto& b : mem) b = static_cast<uint8_t>(rng());
    for (int round = 0; round < 12; round++) {
      if (round > 0) mutate(mem, P, rng, round);
      std::vector<uint64_t> pns = all_pages(pages);
      if (round % 3 == 2) std::shuffle(pns.begin(), pns.end(), rng);  // out of order
      if (round % 4 == 3) pns.resize(pages / 2);                       // subset
      for (auto& pair : pairs) pair->sync(mem, pns);
      for (auto& pair : pairs) {
        // Every path writes the same bytes and rebuilds the same memory.
        CHECK(pair->frame == pairs[0]->frame);
        for (uint64_t pn : pns) CHECK(std::memcmp(&pair->region[pn * P], &mem[pn * P], P) == 0);
      }
    }
    const EncoderStats& st = pairs[0]->enc->stats();
    CHECK(st.zero > 0 && st.dup > 0 && st.delta > 0 && st.full > 0 && st.unchanged > 0);
  }
}

TEST(codec_record_sizes) {
  const uint32_t P = 4096;
  Pair pair(P, 1 << 20, 4, SimdPath::kAuto);
  std::mt19937_64 rng(test::seed() + 9);
  std::vector<uint8_t> mem(P * 4);
  for (auto& b : mem) b = static_cast<uint8_t>(rng() | 1);
  pair.sync(mem, {0, 1, 2, 3});
  const size_t header = kHeaderSize;
  // One changed aligned word: tag + 1 byte + 8 literal bytes.
  uint64_t v = ~0ull;
  std::memcpy(&mem[1000 * 8 % P], &v, 8);
  CHECK_EQ(pair.sync(mem, {0}), header + 10);
  // Unchanged page: the tag alone.
  CHECK_EQ(pair.sync(mem, {0}), header + 1);
  // A 512-byte aligned region: tag + 2-byte token + 512 bytes, plus one
  // varint byte because page 1 does not follow page 0 in this frame.
  for (size_t i = 0; i < 512; i++) mem[P + 1024 + i] ^= 0xff;
  CHECK_EQ(pair.sync(mem, {1}), header + 1 + 1 + 2 + 512);
  // One changed byte: byte units win (tag, page varint, 2-byte token, 1 byte).
  mem[2 * P + 5] ^= 1;
  CHECK_EQ(pair.sync(mem, {2}), header + 1 + 1 + 2 + 1);
}

TEST(codec_evicted_baseline_sends_full) {
  const uint32_t P = 4096;
  Pair pair(P, 2 * P, 8, SimdPath::kAuto);
  std::vector<uint8_t> mem(P * 8, 0x11);
  for (size_t i = 0; i < mem.size(); i += P) mem[i] = static_cast<uint8_t>(i / P);  // distinct pages
  pair.sync(mem, all_pages(8));
  CHECK_EQ(pair.enc->stats().full, 8u);
  CHECK_EQ(pair.enc->stats().cache_evictions, 6u);
  mem[0 * P + 100] ^= 1;  // evicted: FULL
  mem[7 * P + 100] ^= 1;  // cached: DELTA
  pair.sync(mem, {0, 7});
  CHECK_EQ(pair.enc->stats().full, 9u);
  CHECK_EQ(pair.enc->stats().delta, 1u);
  CHECK(pair.region == mem);
}

TEST(codec_header_errors) {
  const uint32_t P = 4096;
  Pair pair(P, 1 << 20, 2, SimdPath::kAuto);
  std::vector<uint8_t> mem(P * 2, 3);
  pair.sync(mem, {0, 1});
  std::vector<uint8_t> f = pair.frame;
  FrameHeader h;
  for (size_t len = 0; len < f.size(); len++) {
    Status s = parse_header(f.data(), len, &h);
    CHECK(s == Status::kTruncated);
  }
  auto bad = f;
  bad[0] ^= 1;
  CHECK(parse_header(bad.data(), bad.size(), &h) == Status::kBadMagic);
  bad = f;
  bad[4] = 9;
  CHECK(parse_header(bad.data(), bad.size(), &h) == Status::kHeaderChecksum);
  bad = f;
  bad.push_back(0);
  CHECK(parse_header(bad.data(), bad.size(), &h) == Status::kCorrupt);
  bad = f;
  bad[kHeaderSize + 3] ^= 0x10;
  DecodeCounts c;
  CHECK(pair.dec->apply_frame(bad.data(), bad.size(), pair.region.data(), pair.region.size(), &c) ==
        Status::kPayloadChecksum);
  std::vector<uint8_t> small(P);  // region of one page: page 1 is out of range
  CHECK(pair.dec->apply_frame(f.data(), f.size(), small.data(), small.size(), &c) == Status::kPageOutOfRange);
  CHECK(std::all_of(small.begin(), small.end(), [](uint8_t b) { return b == 0; }));
}

// Mutated record streams with a valid checksum: every outcome must be a
// clean status, and a failed frame must leave the region untouched.
TEST(codec_hostile_frames_are_atomic) {
  const uint32_t P = 512;
  const size_t pages = 16;
  Pair pair(P, P * pages, pages, SimdPath::kAuto);
  std::mt19937_64 rng(test::seed() + 11);
  std::vector<uint8_t> mem(P * pages);
  for (auto& b : mem) b = static_cast<uint8_t>(rng());
  pair.sync(mem, all_pages(pages));
  size_t failed = 0, ok = 0;
  for (int iter = 0; iter < 3000; iter++) {
    mutate(mem, P, rng, iter);
    pair.sync(mem, all_pages(pages));
    std::vector<uint8_t> f = pair.frame;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = kHeaderSize + rng() % (f.size() - kHeaderSize);
      switch (rng() % 3) {
        case 0: f[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
        case 1: f[at] = static_cast<uint8_t>(rng()); break;
        case 2: f.erase(f.begin() + static_cast<long>(at)); break;
      }
    }
    FrameHeader h;
    CHECK(parse_header_only(f.data(), f.size(), &h) == Status::kOk);
    h.raw_len = h.payload_len = static_cast<uint32_t>(f.size() - kHeaderSize);
    h.raw_crc = crc32c(0, f.data() + kHeaderSize, h.raw_len);
    write_header(h, f.data());
    std::vector<uint8_t> target = pair.region, before = pair.region;
    DecodeCounts c;
    Status s = pair.dec->apply_frame(f.data(), f.size(), target.data(), target.size(), &c);
    if (s == Status::kOk) {
      ok++;
    } else {
      failed++;
      CHECK(target == before);
    }
  }
  CHECK(failed > 1000);
  (void)ok;
}
