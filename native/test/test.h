// A minimal test runner: TEST(name) registers, CHECK/CHECK_EQ fail loudly.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace dwcp::test {

// Equal contents, whatever the containers (received messages use their own allocator).
template <class A, class B>
bool same_bytes(const A& a, const B& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

struct Case {
  const char* name;
  std::function<void()> fn;
};
std::vector<Case>& registry();
extern int failures;

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

// Seeded from DWCP_TEST_SEED when set so a failure replays exactly.
uint64_t seed();

}  // namespace dwcp::test

#define TEST_CAT2(a, b) a##b
#define TEST_CAT(a, b) TEST_CAT2(a, b)
#define TEST(name)                                                           \
  static void name();                                                        \
  static ::dwcp::test::Register TEST_CAT(reg_, name)(#name, name);           \
  static void name()

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b)                                                                        \
  do {                                                                                        \
    auto va_ = (a);                                                                           \
    auto vb_ = (b);                                                                           \
    if (!(va_ == vb_)) {                                                                      \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%llu vs %llu)\n", __FILE__,     \
                   __LINE__, #a, #b, (unsigned long long)(va_), (unsigned long long)(vb_));   \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)
