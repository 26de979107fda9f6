// What the data plane can use on this host: CPU features and SIMD paths,
// io_uring, libibverbs and RDMA devices, CRC32C. Backs `novacron doctor`.
#include <dlfcn.h>
#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <napi.h>

#include "hde/kernels.h"
#include "transport/rdma/verbs.h"
#include "util.h"
#include "util/cpu.h"
#include "util/crc32c.h"

namespace dwcp::binding {
namespace {

Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto& f = cpu_features();
  Napi::Object o = Napi::Object::New(env);
  o.Set("sse2", f.sse2);
  o.Set("sse42", f.sse42);
  o.Set("avx2", f.avx2);
  o.Set("bmi2", f.bmi2);
  o.Set("avx512f", f.avx512f);
  o.Set("avx512bw", f.avx512bw);
  o.Set("avx512vl", f.avx512vl);
  o.Set("crc32c", crc32c_path());
  o.Set("vpclmulqdq", f.vpclmulqdq);
  return o;
}

Napi::Value SimdPaths(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array supported = Napi::Array::New(env);
  uint32_t i = 0;
  for (hde::SimdPath p : {hde::SimdPath::kScalar, hde::SimdPath::kSse2, hde::SimdPath::kAvx2,
                          hde::SimdPath::kAvx512}) {
    if (hde::simd_path_supported(p)) supported.Set(i++, hde::simd_path_name(p));
  }
  o.Set("supported", supported);
  o.Set("selected", hde::select_kernels(hde::SimdPath::kAuto)->name);
  return o;
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Bytes b = GetBytes(info[0], "data");
  uint32_t seed = info.Length() > 1 ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(info.Env(), crc32c(seed, b.data, b.len));
}

// Sets up and tears down a tiny ring: the only reliable test, since
// seccomp, sysctl kernel.io_uring_disabled and old kernels all say no here.
Napi::Value ProbeIoUring(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  io_uring_params params;
  std::memset(&params, 0, sizeof(params));
  long fd = syscall(__NR_io_uring_setup, 4, &params);
  if (fd < 0) {
    int err = errno;
    o.Set("available", false);
    o.Set("error", std::string(strerrordesc_np(err) ? strerrordesc_np(err) : "unknown"));
    return o;
  }
  close(static_cast<int>(fd));
  o.Set("available", true);
  o.Set("features", Napi::Number::New(env, params.features));
  return o;
}

// libibverbs is opened at run time (transport/rdma/ibverbs.cc), so one
// build serves hosts with and without rdma-core: devices and, per port, its
// state, link layer (InfiniBand or Ethernet for RoCE), active MTU and GID 0.
Napi::Value ProbeRdma(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  Napi::Array devices = Napi::Array::New(env);
  Napi::Array ports = Napi::Array::New(env);
  o.Set("devices", devices);
  o.Set("ports", ports);
  std::string error;
  auto verbs = transport::rdma::open_ibverbs(&error);
  if (!verbs) {
    o.Set("library", env.Null());
    o.Set("error", error);
    return o;
  }
  o.Set("library", "libibverbs.so.1");
  uint32_t nd = 0, np = 0;
  for (const auto& d : verbs->devices()) {
    devices.Set(nd++, d.name);
    for (const auto& p : d.ports) {
      Napi::Object po = Napi::Object::New(env);
      po.Set("device", d.name);
      po.Set("port", p.number);
      po.Set("state", p.state);
      po.Set("linkLayer", p.link_layer);
      po.Set("mtu", p.mtu);
      po.Set("gid", p.gid);
      po.Set("gidIndex", p.gid_index);
      ports.Set(np++, po);
    }
  }
  return o;
}

Napi::Value SystemPageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(sysconf(_SC_PAGESIZE)));
}

}  // namespace

void InitSystem(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuFeatures", Napi::Function::New<CpuFeatures>(env, "cpuFeatures"));
  exports.Set("simdPaths", Napi::Function::New<SimdPaths>(env, "simdPaths"));
  exports.Set("crc32c", Napi::Function::New<Crc32c>(env, "crc32c"));
  exports.Set("probeIoUring", Napi::Function::New<ProbeIoUring>(env, "probeIoUring"));
  exports.Set("systemPageSize", Napi::Function::New<SystemPageSize>(env, "systemPageSize"));
  exports.Set("probeRdma", Napi::Function::New<ProbeRdma>(env, "probeRdma"));
}

}  // namespace dwcp::binding
