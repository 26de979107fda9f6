// A Lender of `count` slabs of `size` bytes each, for tests and benchmarks:
// the first free one that is large enough goes out; giving back a slab that
// is not out aborts.
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "transport/frame.h"

namespace dwcp::test {

class FixedLender : public transport::Lender {
 public:
  FixedLender(size_t count, size_t size) : slabs_(count), out_(count, false) {
    for (auto& s : slabs_) s.reserve(size);
  }
  transport::Bytes* take(size_t n, int32_t* slab) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < slabs_.size(); i++) {
      if (!out_[i] && slabs_[i].capacity() >= n) {
        out_[i] = true;
        slabs_[i].resize(n);
        *slab = static_cast<int32_t>(i);
        takes_++;
        return &slabs_[i];
      }
    }
    return nullptr;
  }
  void give(int32_t slab) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (slab < 0 || static_cast<size_t>(slab) >= out_.size() || !out_[static_cast<size_t>(slab)]) {
      std::fprintf(stderr, "FixedLender: slab %d given back but not out\n", slab);
      std::abort();
    }
    out_[static_cast<size_t>(slab)] = false;
  }
  size_t out() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<size_t>(std::count(out_.begin(), out_.end(), true));
  }
  size_t takes() {
    std::lock_guard<std::mutex> lock(mu_);
    return takes_;
  }

 private:
  std::mutex mu_;
  size_t takes_ = 0;
  std::vector<transport::Bytes> slabs_;
  std::vector<bool> out_;
};

}  // namespace dwcp::test
