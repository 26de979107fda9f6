#include <cstdlib>
#include <cstring>

#include "hde/kernels.h"
#include "util/cpu.h"

namespace dwcp::hde {

bool simd_path_supported(SimdPath path) {
  const CpuFeatures& f = cpu_features();
  switch (path) {
    case SimdPath::kScalar: return true;
    case SimdPath::kSse2: return f.sse2;
    case SimdPath::kAvx2: return f.avx2;
    case SimdPath::kAvx512: return f.avx512f && f.avx512bw && f.avx512vl;
    case SimdPath::kAuto: return true;
  }
  return false;
}

const Kernels* select_kernels(SimdPath path) {
  if (path == SimdPath::kAuto) {
    // DWCP_HDE_SIMD lets valgrind runs (which cannot decode AVX-512) force a
    // narrower path without code changes.
    if (const char* env = std::getenv("DWCP_HDE_SIMD")) {
      SimdPath forced;
      if (parse_simd_path(env, &forced) && forced != SimdPath::kAuto) return select_kernels(forced);
    }
    for (SimdPath p : {SimdPath::kAvx512, SimdPath::kAvx2, SimdPath::kSse2}) {
      if (simd_path_supported(p)) return select_kernels(p);
    }
    return &scalar_kernels();
  }
  if (!simd_path_supported(path)) return nullptr;
  switch (path) {
    case SimdPath::kScalar: return &scalar_kernels();
    case SimdPath::kSse2: return &sse2_kernels();
    case SimdPath::kAvx2: return &avx2_kernels();
    case SimdPath::kAvx512: return &avx512_kernels();
    case SimdPath::kAuto: break;
  }
  return nullptr;
}

const char* simd_path_name(SimdPath path) {
  switch (path) {
    case SimdPath::kScalar: return "scalar";
    case SimdPath::kSse2: return "sse2";
    case SimdPath::kAvx2: return "avx2";
    case SimdPath::kAvx512: return "avx512";
    case SimdPath::kAuto: return "auto";
  }
  return "unknown";
}

bool parse_simd_path(const char* name, SimdPath* out) {
  for (SimdPath p : {SimdPath::kScalar, SimdPath::kSse2, SimdPath::kAvx2, SimdPath::kAvx512,
                     SimdPath::kAuto}) {
    if (std::strcmp(name, simd_path_name(p)) == 0) {
      *out = p;
      return true;
    }
  }
  return false;
}

}  // namespace dwcp::hde
