// Helpers shared by the binding files: argument access, type tags, errors.
// Data errors travel back to JS as negative status numbers that TypeScript
// turns into error classes (src/errors.ts); only misuse of the raw binding
// (wrong argument types) throws from here.
#pragma once
#include <napi.h>

#include <cstdint>

#include "util/status.h"

namespace dwcp::binding {

struct Bytes {
  uint8_t* data = nullptr;
  size_t len = 0;
};

// Uint8Array (Buffer included) view; throws TypeError otherwise.
Bytes GetBytes(const Napi::Value& v, const char* what);
// Typed array of a given element type; throws TypeError otherwise.
void* GetTypedArray(const Napi::Value& v, napi_typedarray_type type, size_t* length,
                    const char* what);

// Throws an Error whose `code` is ERR_HDE_<STATUS NAME>.
[[noreturn]] void ThrowStatus(Napi::Env env, Status s, const char* message);

// Guards methods against being called on an object of another class.
void TagObject(Napi::Env env, Napi::Object obj, const napi_type_tag* tag);
void CheckTag(const Napi::CallbackInfo& info, const napi_type_tag* tag, const char* cls);

}  // namespace dwcp::binding
