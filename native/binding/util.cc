#include "util.h"

#include <string>

namespace dwcp::binding {

Bytes GetBytes(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Uint8Array");
  }
  auto a = v.As<Napi::Uint8Array>();
  return Bytes{a.Data(), a.ByteLength()};
}

void* GetTypedArray(const Napi::Value& v, napi_typedarray_type type, size_t* length,
                    const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Napi::TypeError::New(v.Env(), std::string(what) + " has the wrong array type");
  }
  auto a = v.As<Napi::TypedArray>();
  *length = a.ElementLength();
  return static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
}

void ThrowStatus(Napi::Env env, Status s, const char* message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, std::string("ERR_HDE_") + status_name(s)));
  throw e;
}

void TagObject(Napi::Env env, Napi::Object obj, const napi_type_tag* tag) {
  NAPI_THROW_IF_FAILED_VOID(env, napi_type_tag_object(env, obj, tag));
}

void CheckTag(const Napi::CallbackInfo& info, const napi_type_tag* tag, const char* cls) {
  bool ok = false;
  napi_value self = info.This();
  if (!info.This().IsObject() ||
      napi_check_object_type_tag(info.Env(), self, tag, &ok) != napi_ok || !ok) {
    throw Napi::TypeError::New(info.Env(), std::string("receiver is not a ") + cls);
  }
}

}  // namespace dwcp::binding
