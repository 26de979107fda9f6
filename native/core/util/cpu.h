// Runtime CPU feature detection, queried once.
#pragma once
#include <string>

namespace dwcp {

struct CpuFeatures {
  bool sse2 = false;
  bool sse42 = false;   // also means the CRC32 instruction
  bool avx2 = false;
  bool bmi2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool vpclmulqdq = false;  // carry-less multiply on 512-bit registers (with avx512f)
};

const CpuFeatures& cpu_features();

}  // namespace dwcp
