#include <csignal>
#include <cstring>

#include "test.h"

namespace dwcp::test {

std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}

uint64_t seed() {
  static const uint64_t s = [] {
    const char* env = std::getenv("DWCP_TEST_SEED");
    return env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  }();
  return s;
}

}  // namespace dwcp::test

int main(int argc, char** argv) {
  // Tests write raw bytes to sockets the engine may already have closed.
  std::signal(SIGPIPE, SIG_IGN);
  const char* filter = argc > 1 ? argv[1] : nullptr;
  std::printf("seed %llu (set DWCP_TEST_SEED to replay)\n", (unsigned long long)dwcp::test::seed());
  int ran = 0;
  for (const auto& c : dwcp::test::registry()) {
    if (filter && !std::strstr(c.name, filter)) continue;
    std::printf("  %s\n", c.name);
    std::fflush(stdout);
    c.fn();
    ran++;
  }
  std::printf("ok: %d tests\n", ran);
  return 0;
}
