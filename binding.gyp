{
  "variables": {
    "core_cflags": ["-O3", "-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  },
  "target_defaults": {
    "include_dirs": ["native/core", "native"],
    "cflags!": ["-fno-exceptions", "-O2"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-O2"],
    "cflags_cc": ["<@(core_cflags)"],
    "defines": ["NAPI_VERSION=8"]
  },
  "targets": [
    {
      "target_name": "dwcp_core_avx2",
      "type": "static_library",
      "sources": ["native/core/hde/kernels_avx2.cc"],
      "cflags_cc": ["-mavx2", "-mpopcnt"]
    },
    {
      "target_name": "dwcp_core_avx512",
      "type": "static_library",
      "sources": ["native/core/hde/kernels_avx512.cc"],
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mpopcnt", "-Wno-maybe-uninitialized"]
    },
    {
      "target_name": "dwcp_core_sse42",
      "type": "static_library",
      "sources": ["native/core/util/crc32c_sse42.cc"],
      "cflags_cc": ["-msse4.2"]
    },
    {
      "target_name": "dwcp_core_clmul",
      "type": "static_library",
      "sources": ["native/core/util/crc32c_avx512.cc"],
      "cflags_cc": ["-mavx512f", "-mvpclmulqdq", "-mpclmul", "-msse4.2"]
    },
    {
      "target_name": "dwcp",
      "dependencies": ["dwcp_core_avx2", "dwcp_core_avx512", "dwcp_core_sse42", "dwcp_core_clmul"],
      "sources": [
        "native/core/util/status.cc",
        "native/core/util/cpu.cc",
        "native/core/util/crc32c.cc",
        "native/core/hde/dispatch.cc",
        "native/core/hde/kernels_scalar.cc",
        "native/core/hde/kernels_sse2.cc",
        "native/core/hde/format.cc",
        "native/core/hde/baseline_cache.cc",
        "native/core/hde/encoder.cc",
        "native/core/hde/decoder.cc",
        "native/transport/frame.cc",
        "native/transport/tcp/socket.cc",
        "native/transport/tcp/engine.cc",
        "native/transport/rdma/ibverbs.cc",
        "native/binding/addon.cc",
        "native/binding/util.cc",
        "native/binding/hde_wrap.cc",
        "native/binding/system_probe.cc",
        "native/binding/amst_wrap.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "libraries": ["-ldl"]
    }
  ]
}
