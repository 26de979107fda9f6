// Addon entry. Context-aware: every Node environment (main thread or worker)
// gets its own exports and its own objects, each torn down by cleanup hooks.
#include <napi.h>

namespace dwcp::binding {
void InitHde(Napi::Env env, Napi::Object exports);
void InitSystem(Napi::Env env, Napi::Object exports);
void InitAmst(Napi::Env env, Napi::Object exports);
}  // namespace dwcp::binding

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  dwcp::binding::InitHde(env, exports);
  dwcp::binding::InitSystem(env, exports);
  dwcp::binding::InitAmst(env, exports);
  return exports;
}

NODE_API_MODULE(dwcp, Init)
