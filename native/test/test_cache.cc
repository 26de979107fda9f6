// The baseline cache against a simple model: membership and LRU eviction.
#include <list>
#include <unordered_map>

#include "hde/baseline_cache.h"
#include "test.h"

using namespace dwcp::hde;
namespace test = dwcp::test;

TEST(cache_lru_matches_model) {
  std::mt19937_64 rng(test::seed() + 3);
  for (uint32_t slots : {1u, 2u, 7u, 64u, 300u}) {
    BaselineCache c(512, static_cast<uint64_t>(slots) * 512);
    CHECK_EQ(c.capacity(), slots);
    std::list<uint64_t> lru;  // front = most recent
    const uint64_t keyspace = slots * 3 + 5;
    for (int op = 0; op < 20000; op++) {
      uint64_t pn = rng() % keyspace;
      if (rng() % 4 == 0) pn = (pn << 40) | 17;  // far-apart keys too
      if (rng() % 3 == 0) {
        bool in_model = std::find(lru.begin(), lru.end(), pn) != lru.end();
        CHECK_EQ(c.find(pn) != BaselineCache::kNone, in_model);
        continue;
      }
      bool inserted;
      uint32_t s = c.insert_or_touch(pn, &inserted);
      auto it = std::find(lru.begin(), lru.end(), pn);
      CHECK_EQ(inserted, it == lru.end());
      if (it != lru.end()) lru.erase(it);
      lru.push_front(pn);
      if (lru.size() > slots) lru.pop_back();
      CHECK_EQ(c.page_number(s), pn);
      CHECK_EQ(c.size(), lru.size());
    }
    for (uint64_t pn : lru) CHECK(c.find(pn) != BaselineCache::kNone);
  }
}

TEST(cache_zero_capacity) {
  BaselineCache c(4096, 4095);
  CHECK_EQ(c.capacity(), 0u);
  CHECK(c.find(1) == BaselineCache::kNone);
}
