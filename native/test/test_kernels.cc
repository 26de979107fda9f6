// Every SIMD path against the scalar reference on random inputs.
#include <cstring>

#include "hde/kernels.h"
#include "test.h"

using namespace dwcp::hde;
namespace test = dwcp::test;

namespace {

std::vector<const Kernels*> simd_paths() {
  std::vector<const Kernels*> v;
  for (SimdPath p : {SimdPath::kSse2, SimdPath::kAvx2, SimdPath::kAvx512}) {
    if (const Kernels* k = select_kernels(p)) v.push_back(k);
  }
  return v;
}

// 64-byte aligned storage, offset by `skew` to exercise unaligned loads.
struct Buf {
  std::vector<uint8_t> store;
  uint8_t* p;
  Buf(size_t n, size_t skew) : store(n + 128) {
    auto a = reinterpret_cast<uintptr_t>(store.data());
    p = store.data() + ((64 - (a & 63)) & 63) + skew;
  }
};

}  // namespace

TEST(kernels_dispatch_and_names) {
  CHECK(select_kernels(SimdPath::kScalar) == &scalar_kernels());
  CHECK(select_kernels(SimdPath::kAuto) != nullptr);
  SimdPath p;
  CHECK(parse_simd_path("avx2", &p) && p == SimdPath::kAvx2);
  CHECK(!parse_simd_path("avx3", &p));
}

TEST(kernels_is_zero_matches_scalar) {
  const Kernels& ref = scalar_kernels();
  std::mt19937_64 rng(test::seed());
  for (const Kernels* k : simd_paths()) {
    for (size_t n : {64u, 512u, 4096u, 65536u}) {
      for (size_t skew : {0u, 8u, 1u}) {
        Buf b(n, skew);
        std::memset(b.p, 0, n);
        CHECK(k->is_zero(b.p, n) && ref.is_zero(b.p, n));
        for (int t = 0; t < 50; t++) {
          size_t at = rng() % n;
          b.p[at] = static_cast<uint8_t>(1u << (rng() % 8));
          CHECK_EQ(k->is_zero(b.p, n), ref.is_zero(b.p, n));
          CHECK(!k->is_zero(b.p, n));
          b.p[at] = 0;
        }
      }
    }
  }
}

TEST(kernels_diff_words_matches_scalar) {
  const Kernels& ref = scalar_kernels();
  std::mt19937_64 rng(test::seed() + 1);
  for (const Kernels* k : simd_paths()) {
    for (size_t n : {512u, 4096u, 65536u}) {
      Buf a(n, 0), b(n, 8);
      std::vector<uint64_t> bm_ref(n / 512), bm(n / 512);
      for (int t = 0; t < 200; t++) {
        for (size_t i = 0; i < n; i++) a.p[i] = static_cast<uint8_t>(rng());
        std::memcpy(b.p, a.p, n);
        // Changes of every density, including single bits and whole words.
        size_t changes = rng() % (t % 4 == 0 ? n : 64);
        for (size_t c = 0; c < changes; c++) b.p[rng() % n] ^= static_cast<uint8_t>(1u << (rng() % 8));
        uint32_t limit = t % 3 == 0 ? static_cast<uint32_t>(rng() % (n / 8)) : UINT32_MAX;
        uint32_t cr = ref.diff_words(a.p, b.p, n, bm_ref.data(), limit);
        uint32_t ck = k->diff_words(a.p, b.p, n, bm.data(), limit);
        CHECK_EQ(cr > limit, ck > limit);
        if (cr <= limit) {
          CHECK_EQ(cr, ck);
          CHECK(bm_ref == bm);
        }
      }
    }
  }
}

TEST(kernels_xor_and_hash_match_scalar) {
  const Kernels& ref = scalar_kernels();
  std::mt19937_64 rng(test::seed() + 2);
  for (const Kernels* k : simd_paths()) {
    for (int t = 0; t < 300; t++) {
      size_t n = rng() % 700;
      Buf a(n, rng() % 8), b(n, rng() % 8), d1(n, rng() % 8), d2(n, rng() % 8);
      for (size_t i = 0; i < n; i++) a.p[i] = static_cast<uint8_t>(rng()), b.p[i] = static_cast<uint8_t>(rng());
      ref.xor_bytes(d1.p, a.p, b.p, n);
      k->xor_bytes(d2.p, a.p, b.p, n);
      CHECK(std::memcmp(d1.p, d2.p, n) == 0);
      ref.xor_into(d1.p, a.p, n);
      k->xor_into(d2.p, a.p, n);
      CHECK(std::memcmp(d1.p, d2.p, n) == 0);
      CHECK(std::memcmp(d1.p, b.p, n) == 0);  // (a ^ b) ^ a == b
      size_t hn = (n / 64) * 64;
      CHECK_EQ(ref.hash(a.p, hn), k->hash(a.p, hn));
      Buf s1(hn, 0), s2(hn + 1, 0);
      ref.stream_copy(s1.p, a.p, hn);
      k->stream_copy(s2.p + 1, a.p, hn);
      CHECK(std::memcmp(s1.p, a.p, hn) == 0 && std::memcmp(s2.p + 1, a.p, hn) == 0);
    }
  }
}

TEST(kernels_hash_separates_pages) {
  std::vector<uint8_t> p(4096, 7);
  const Kernels& k = *select_kernels(SimdPath::kAuto);
  uint64_t h0 = k.hash(p.data(), p.size());
  // Swapping two blocks must change the hash (positions are mixed in).
  std::vector<uint8_t> q(p);
  q[0] = 1;
  q[64] = 2;
  std::vector<uint8_t> r(p);
  r[0] = 2;
  r[64] = 1;
  CHECK(k.hash(q.data(), q.size()) != k.hash(r.data(), r.size()));
  CHECK(k.hash(q.data(), q.size()) != h0);
}

TEST(kernels_bitmap_words_match_scalar) {
  const Kernels& ref = scalar_kernels();
  std::mt19937_64 rng(test::seed() + 4);
  for (const Kernels* k : simd_paths()) {
    for (size_t n : {512u, 4096u, 65536u}) {
      const size_t words = n / 8;
      for (int t = 0; t < 100; t++) {
        Buf cur(n, 0), base(n, 8), p1(n, 0), p2(n, 0), o1(n + 64, 1), o2(n + 64, 3);
        for (size_t i = 0; i < n; i++) cur.p[i] = static_cast<uint8_t>(rng()), base.p[i] = static_cast<uint8_t>(rng());
        std::memcpy(p1.p, base.p, n);
        std::memcpy(p2.p, base.p, n);
        std::vector<uint64_t> bm(words / 64);
        const unsigned density = static_cast<unsigned>(rng() % 65);
        for (auto& m : bm) for (int b = 0; b < 64; b++) if (rng() % 64 < density) m |= 1ull << b;
        uint8_t* e1 = ref.emit_words(o1.p, cur.p, base.p, p1.p, bm.data(), words);
        uint8_t* e2 = k->emit_words(o2.p, cur.p, base.p, p2.p, bm.data(), words);
        CHECK_EQ(static_cast<size_t>(e1 - o1.p), static_cast<size_t>(e2 - o2.p));
        CHECK(std::memcmp(o1.p, o2.p, static_cast<size_t>(e1 - o1.p)) == 0);
        CHECK(std::memcmp(p1.p, p2.p, n) == 0);
        // Applying the emitted XORs to the old base rebuilds the patched page.
        std::vector<uint8_t> bmb(words / 8);
        std::memcpy(bmb.data(), bm.data(), bmb.size());
        Buf a1(n, 0), a2(n, 5);
        std::memcpy(a1.p, base.p, n);
        std::memcpy(a2.p, base.p, n);
        // Input exactly as long as the words: no slack after it.
        std::vector<uint8_t> in(o1.p, e1);
        const uint8_t* r1 = ref.apply_words(a1.p, in.data(), bmb.data(), words);
        const uint8_t* r2 = k->apply_words(a2.p, in.data(), bmb.data(), words);
        CHECK(r1 == in.data() + in.size() && r2 == r1);
        CHECK(std::memcmp(a1.p, p1.p, n) == 0 && std::memcmp(a2.p, p1.p, n) == 0);
      }
    }
  }
}
