// JS classes HdeEncoder and HdeDecoder over the core codec. Methods return a
// non-negative result or -status; src/dwcp/encoding turns that into errors.
#include <napi.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "hde/decoder.h"
#include "hde/encoder.h"
#include "util.h"

namespace dwcp::binding {
namespace {

constexpr napi_type_tag kEncoderTag = {0x6e6f7661a1c3e001ull, 0x48444520454e4331ull};
constexpr napi_type_tag kDecoderTag = {0x6e6f7661a1c3e002ull, 0x48444520444543ull};

hde::SimdPath ParseSimd(Napi::Env env, const Napi::Object& o) {
  hde::SimdPath path = hde::SimdPath::kAuto;
  Napi::Value v = o.Get("simd");
  if (v.IsUndefined()) return path;
  std::string name = v.As<Napi::String>().Utf8Value();
  if (!hde::parse_simd_path(name.c_str(), &path)) {
    ThrowStatus(env, Status::kInvalidArgument, ("unknown SIMD path: " + name).c_str());
  }
  if (!hde::simd_path_supported(path)) {
    ThrowStatus(env, Status::kInvalidArgument, ("this CPU cannot run SIMD path " + name).c_str());
  }
  return path;
}

// Lets the env cleanup hook wait for an in-flight worker before freeing
// native state, so a terminating worker thread cannot free memory that the
// thread pool is still using.
struct BusyFlag {
  std::atomic<bool> busy{false};
  bool try_acquire() {
    bool expected = false;
    return busy.compare_exchange_strong(expected, true, std::memory_order_acquire);
  }
  void release() { busy.store(false, std::memory_order_release); }
  void wait_idle() const {
    while (busy.load(std::memory_order_acquire)) std::this_thread::yield();
  }
};

// A native object owned by a JS wrapper: closed explicitly, by the
// finalizer or by the env cleanup hook, whichever comes first, and lent to
// one caller at a time.
template <class T>
class Guarded {
 public:
  explicit Guarded(std::unique_ptr<T> obj) : obj_(std::move(obj)) {}
  T* get() const { return obj_.get(); }
  // The object for exclusive use, or nullptr with *status CLOSED or BUSY.
  T* Acquire(Status* status) {
    if (!obj_) {
      *status = Status::kClosed;
      return nullptr;
    }
    if (!busy_.try_acquire()) {
      *status = Status::kBusy;
      return nullptr;
    }
    return obj_.get();
  }
  void Release() { busy_.release(); }
  // 0, or -BUSY while an asynchronous call holds the object.
  double Close() {
    if (obj_ && busy_.busy.load()) return -static_cast<double>(Status::kBusy);
    obj_.reset();
    return 0;
  }
  // Waits out an in-flight worker, then frees.
  void Destroy() {
    busy_.wait_idle();
    obj_.reset();
  }

 private:
  std::unique_ptr<T> obj_;
  BusyFlag busy_;
};

template <class T>
class CleanupHook {
 public:
  void add(Napi::Env env, T* self) {
    env_ = env;
    if (napi_add_env_cleanup_hook(env, &Run, self) == napi_ok) added_ = true;
  }
  void remove(T* self) {
    if (added_) napi_remove_env_cleanup_hook(env_, &Run, self);
    added_ = false;
  }
  void ran() { added_ = false; }

 private:
  static void Run(void* arg) {
    T* self = static_cast<T*>(arg);
    self->hook_.ran();
    self->Release();
  }
  napi_env env_ = nullptr;
  bool added_ = false;
};

Napi::Object Retain(Napi::Env env, std::initializer_list<Napi::Value> values) {
  Napi::Array a = Napi::Array::New(env, values.size());
  uint32_t i = 0;
  for (const auto& v : values) a.Set(i++, v);
  return a;
}


// Calls an async worker's JS callback with one number. Plain N-API calls
// whose failures are ignored: while a worker thread is being torn down JS
// cannot run, and a C++ exception here would abort the process. An exception
// thrown by the callback itself stays pending and surfaces as usual.
void CallBack(Napi::AsyncWorker& w, double value) {
  napi_env env = w.Env();
  napi_value arg, result;
  if (napi_create_double(env, value, &arg) != napi_ok) return;
  napi_call_function(env, w.Receiver().Value(), w.Callback().Value(), 1, &arg, &result);
}

// ---------------------------------------------------------------- encoder

class EncoderWrap : public Napi::ObjectWrap<EncoderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "HdeEncoder",
                       {InstanceMethod<&EncoderWrap::MaxEncodedSize>("maxEncodedSize"),
                        InstanceMethod<&EncoderWrap::Encode>("encode"),
                        InstanceMethod<&EncoderWrap::EncodeDirty>("encodeDirty"),
                        InstanceMethod<&EncoderWrap::EncodeAsync>("encodeAsync"),
                        InstanceMethod<&EncoderWrap::Stats>("stats"),
                        InstanceMethod<&EncoderWrap::Reset>("reset"),
                        InstanceMethod<&EncoderWrap::Close>("close"),
                        InstanceAccessor<&EncoderWrap::Simd>("simd")});
  }

  explicit EncoderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EncoderWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    hde::EncoderOptions opts;
    opts.page_size = o.Get("pageSize").As<Napi::Number>().Uint32Value();
    opts.cache_bytes = static_cast<uint64_t>(o.Get("cacheBytes").As<Napi::Number>().DoubleValue());
    opts.delta_threshold = o.Get("deltaThreshold").As<Napi::Number>().DoubleValue();
    opts.detect_duplicates = o.Get("detectDuplicates").As<Napi::Boolean>().Value();
    opts.simd = ParseSimd(env, o);
    std::unique_ptr<hde::Encoder> enc;
    Status s = hde::Encoder::create(opts, &enc);
    if (s != Status::kOk) ThrowStatus(env, s, "invalid encoder options");
    enc_ = std::make_unique<Guarded<hde::Encoder>>(std::move(enc));
    TagObject(env, info.This().As<Napi::Object>(), &kEncoderTag);
    hook_.add(env, this);
  }

  ~EncoderWrap() override {
    hook_.remove(this);
    Release();
  }

  void Release() {
    if (enc_) enc_->Destroy();
  }

 private:
  friend class CleanupHook<EncoderWrap>;
  friend class EncodeWorker;

  hde::Encoder* Acquire(Status* status) { return enc_->Acquire(status); }

  Napi::Value MaxEncodedSize(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    if (!enc_->get()) return Napi::Number::New(info.Env(), -static_cast<double>(Status::kClosed));
    double n = info[0].As<Napi::Number>().DoubleValue();
    return Napi::Number::New(info.Env(), static_cast<double>(enc_->get()->max_encoded_size(static_cast<size_t>(n))));
  }

  // encode(out, pages, pageNumbers: BigUint64Array) -> bytes written | -status
  Napi::Value Encode(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    Bytes out = GetBytes(info[0], "out");
    Bytes pages = GetBytes(info[1], "pages");
    size_t npns;
    auto* pns = static_cast<uint64_t*>(GetTypedArray(info[2], napi_biguint64_array, &npns, "pageNumbers"));
    Status s = Status::kOk;
    hde::Encoder* enc = Acquire(&s);
    if (!enc) return Napi::Number::New(info.Env(), -static_cast<double>(s));
    size_t written = 0;
    if (pages.len != npns * enc->geometry().page_size) {
      s = Status::kInvalidArgument;
    } else {
      s = enc->encode(pages.data, pns, npns, out.data, out.len, &written);
    }
    enc_->Release();
    return Napi::Number::New(info.Env(), s == Status::kOk ? static_cast<double>(written) : -static_cast<double>(s));
  }

  // encodeDirty(out, region, bitmap, firstPage: bigint, result: Float64Array(2))
  // -> 0 | -status; result = [bytes written, pages encoded]
  Napi::Value EncodeDirty(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    Bytes out = GetBytes(info[0], "out");
    Bytes region = GetBytes(info[1], "region");
    Bytes bitmap = GetBytes(info[2], "bitmap");
    bool lossless = false;
    uint64_t first = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
    size_t nres;
    auto* res = static_cast<double*>(GetTypedArray(info[4], napi_float64_array, &nres, "result"));
    if (nres < 2) throw Napi::TypeError::New(info.Env(), "result must hold 2 numbers");
    Status s = Status::kOk;
    hde::Encoder* enc = Acquire(&s);
    if (!enc) return Napi::Number::New(info.Env(), -static_cast<double>(s));
    size_t written = 0, pages = 0;
    s = enc->encode_dirty(region.data, region.len, bitmap.data, bitmap.len, first, out.data,
                          out.len, &written, &pages);
    enc_->Release();
    res[0] = static_cast<double>(written);
    res[1] = static_cast<double>(pages);
    return Napi::Number::New(info.Env(), -static_cast<double>(s));
  }

  Napi::Value EncodeAsync(const Napi::CallbackInfo& info);

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    if (!enc_->get()) return env.Null();
    const hde::EncoderStats& st = enc_->get()->stats();
    auto num = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    num("batches", st.batches);
    num("pages", st.pages);
    num("zero", st.zero);
    num("dup", st.dup);
    num("delta", st.delta);
    num("unchanged", st.unchanged);
    num("full", st.full);
    num("bytesIn", st.bytes_in);
    num("bytesOut", st.bytes_out);
    num("cacheEvictions", st.cache_evictions);
    return o;
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    Status s = Status::kOk;
    hde::Encoder* enc = Acquire(&s);
    if (!enc) return Napi::Number::New(info.Env(), -static_cast<double>(s));
    enc->reset();
    enc_->Release();
    return Napi::Number::New(info.Env(), 0);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    return Napi::Number::New(info.Env(), enc_->Close());
  }

  Napi::Value Simd(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEncoderTag, "HdeEncoder");
    if (!enc_->get()) return info.Env().Null();
    return Napi::String::New(info.Env(), enc_->get()->kernels().name);
  }

  std::unique_ptr<Guarded<hde::Encoder>> enc_;
  CleanupHook<EncoderWrap> hook_;
};

class EncodeWorker : public Napi::AsyncWorker {
 public:
  EncodeWorker(Napi::Function cb, EncoderWrap* self, hde::Encoder* enc, Bytes out, Bytes pages,
               const uint64_t* pns, size_t n, Napi::Object retain)
      : Napi::AsyncWorker(cb, "novacron.hde.encode"),
        self_(self), enc_(enc), out_(out), pages_(pages), pns_(pns), n_(n),
        retain_(Napi::Persistent(retain)) {}

  void Execute() override {
    if (pages_.len != n_ * enc_->geometry().page_size) status_ = Status::kInvalidArgument;
    else status_ = enc_->encode(pages_.data, pns_, n_, out_.data, out_.len, &written_);
    self_->enc_->Release();  // here, not in OnOK: teardown may never call OnOK
  }

  void OnOK() override {
    CallBack(*this, static_cast<double>(status_ == Status::kOk ? static_cast<double>(written_) : -static_cast<double>(status_)));
  }

 private:
  EncoderWrap* self_;
  hde::Encoder* enc_;
  Bytes out_, pages_;
  const uint64_t* pns_;
  size_t n_;
  size_t written_ = 0;
  Status status_ = Status::kOk;
  Napi::ObjectReference retain_;  // keeps the buffers and the encoder alive
};

// encodeAsync(out, pages, pageNumbers, callback(result)) -> 0 | -status
Napi::Value EncoderWrap::EncodeAsync(const Napi::CallbackInfo& info) {
  CheckTag(info, &kEncoderTag, "HdeEncoder");
  Bytes out = GetBytes(info[0], "out");
  Bytes pages = GetBytes(info[1], "pages");
  size_t npns;
  auto* pns = static_cast<uint64_t*>(GetTypedArray(info[2], napi_biguint64_array, &npns, "pageNumbers"));
  if (!info[3].IsFunction()) throw Napi::TypeError::New(info.Env(), "callback must be a function");
  Status s = Status::kOk;
  hde::Encoder* enc = Acquire(&s);
  if (!enc) return Napi::Number::New(info.Env(), -static_cast<double>(s));
  Napi::Object retain = Retain(info.Env(), {info[0], info[1], info[2], info.This()});
  auto* w = new EncodeWorker(info[3].As<Napi::Function>(), this, enc, out, pages, pns, npns, retain);
  w->Queue();
  return Napi::Number::New(info.Env(), 0);
}

// ---------------------------------------------------------------- decoder

class DecoderWrap : public Napi::ObjectWrap<DecoderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "HdeDecoder",
                       {InstanceMethod<&DecoderWrap::Apply>("apply"),
                        InstanceMethod<&DecoderWrap::ApplyAsync>("applyAsync"),
                        InstanceMethod<&DecoderWrap::Close>("close"),
                        InstanceAccessor<&DecoderWrap::Simd>("simd")});
  }

  explicit DecoderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DecoderWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    hde::DecoderOptions opts;
    opts.page_size = o.Get("pageSize").As<Napi::Number>().Uint32Value();
    opts.simd = ParseSimd(env, o);
    std::unique_ptr<hde::Decoder> dec;
    Status s = hde::Decoder::create(opts, &dec);
    if (s != Status::kOk) ThrowStatus(env, s, "invalid decoder options");
    dec_ = std::make_unique<Guarded<hde::Decoder>>(std::move(dec));
    TagObject(env, info.This().As<Napi::Object>(), &kDecoderTag);
    hook_.add(env, this);
  }

  ~DecoderWrap() override {
    hook_.remove(this);
    Release();
  }

  void Release() {
    if (dec_) dec_->Destroy();
  }

 private:
  friend class CleanupHook<DecoderWrap>;
  friend class ApplyWorker;

  hde::Decoder* Acquire(Status* status) { return dec_->Acquire(status); }

  // Parsed by TypeScript first; re-checked here because the header is the
  // only thing telling apply() how to read the records.
  static Status Header(const Bytes& header, hde::FrameHeader* h) {
    return hde::parse_header_only(header.data, header.len, h);
  }

  // apply(header, raw, region, counts: Uint32Array(5)) -> 0 | -status
  Napi::Value Apply(const Napi::CallbackInfo& info) {
    CheckTag(info, &kDecoderTag, "HdeDecoder");
    Bytes header = GetBytes(info[0], "header");
    Bytes raw = GetBytes(info[1], "raw");
    Bytes region = GetBytes(info[2], "region");
    size_t ncounts;
    auto* counts = static_cast<uint32_t*>(GetTypedArray(info[3], napi_uint32_array, &ncounts, "counts"));
    if (ncounts < 5) throw Napi::TypeError::New(info.Env(), "counts must hold 5 numbers");
    Status s = Status::kOk;
    hde::Decoder* dec = Acquire(&s);
    if (!dec) return Napi::Number::New(info.Env(), -static_cast<double>(s));
    hde::FrameHeader h;
    hde::DecodeCounts c;
    s = Header(header, &h);
    if (s == Status::kOk) s = dec->apply(h, raw.data, raw.len, region.data, region.len, &c);
    dec_->Release();
    if (s == Status::kOk) {
      counts[0] = c.pages, counts[1] = c.zero, counts[2] = c.dup, counts[3] = c.delta, counts[4] = c.full;
    }
    return Napi::Number::New(info.Env(), -static_cast<double>(s));
  }

  Napi::Value ApplyAsync(const Napi::CallbackInfo& info);

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CheckTag(info, &kDecoderTag, "HdeDecoder");
    return Napi::Number::New(info.Env(), dec_->Close());
  }

  Napi::Value Simd(const Napi::CallbackInfo& info) {
    CheckTag(info, &kDecoderTag, "HdeDecoder");
    if (!dec_->get()) return info.Env().Null();
    return Napi::String::New(info.Env(), dec_->get()->kernels().name);
  }

  std::unique_ptr<Guarded<hde::Decoder>> dec_;
  CleanupHook<DecoderWrap> hook_;
};

class ApplyWorker : public Napi::AsyncWorker {
 public:
  ApplyWorker(Napi::Function cb, DecoderWrap* self, hde::Decoder* dec, Bytes header, Bytes raw,
              Bytes region, uint32_t* counts, Napi::Object retain)
      : Napi::AsyncWorker(cb, "novacron.hde.apply"),
        self_(self), dec_(dec), header_(header), raw_(raw), region_(region), counts_(counts),
        retain_(Napi::Persistent(retain)) {}

  void Execute() override {
    hde::FrameHeader h;
    status_ = DecoderWrap::Header(header_, &h);
    if (status_ == Status::kOk) status_ = dec_->apply(h, raw_.data, raw_.len, region_.data, region_.len, &c_);
    self_->dec_->Release();
  }

  void OnOK() override {
    if (status_ == Status::kOk) {
      counts_[0] = c_.pages, counts_[1] = c_.zero, counts_[2] = c_.dup, counts_[3] = c_.delta, counts_[4] = c_.full;
    }
    CallBack(*this, -static_cast<double>(status_));
  }

 private:
  DecoderWrap* self_;
  hde::Decoder* dec_;
  Bytes header_, raw_, region_;
  uint32_t* counts_;
  hde::DecodeCounts c_;
  Status status_ = Status::kOk;
  Napi::ObjectReference retain_;
};

Napi::Value DecoderWrap::ApplyAsync(const Napi::CallbackInfo& info) {
  CheckTag(info, &kDecoderTag, "HdeDecoder");
  Bytes header = GetBytes(info[0], "header");
  Bytes raw = GetBytes(info[1], "raw");
  Bytes region = GetBytes(info[2], "region");
  size_t ncounts;
  auto* counts = static_cast<uint32_t*>(GetTypedArray(info[3], napi_uint32_array, &ncounts, "counts"));
  if (ncounts < 5) throw Napi::TypeError::New(info.Env(), "counts must hold 5 numbers");
  if (!info[4].IsFunction()) throw Napi::TypeError::New(info.Env(), "callback must be a function");
  Status s = Status::kOk;
  hde::Decoder* dec = Acquire(&s);
  if (!dec) return Napi::Number::New(info.Env(), -static_cast<double>(s));
  Napi::Object retain = Retain(info.Env(), {info[0], info[1], info[2], info[3], info.This()});
  auto* w = new ApplyWorker(info[4].As<Napi::Function>(), this, dec, header, raw, region, counts, retain);
  w->Queue();
  return Napi::Number::New(info.Env(), 0);
}

// ---------------------------------------------------------------- frames

// parseHeader(frame, out: Float64Array(8), exact: boolean) -> 0 | -status
// out = [version, codec, pageShift, flags, recordCount, rawLen, payloadLen, rawCrc]
Napi::Value ParseHeader(const Napi::CallbackInfo& info) {
  Bytes frame = GetBytes(info[0], "frame");
  size_t nout;
  auto* out = static_cast<double*>(GetTypedArray(info[1], napi_float64_array, &nout, "out"));
  if (nout < 8) throw Napi::TypeError::New(info.Env(), "out must hold 8 numbers");
  bool exact = info[2].ToBoolean().Value();
  hde::FrameHeader h;
  Status s = exact ? hde::parse_header(frame.data, frame.len, &h)
                   : hde::parse_header_only(frame.data, frame.len, &h);
  if (s == Status::kOk) {
    out[0] = h.version, out[1] = static_cast<double>(h.codec), out[2] = h.page_shift, out[3] = h.flags;
    out[4] = h.record_count, out[5] = h.raw_len, out[6] = h.payload_len, out[7] = h.raw_crc;
  }
  return Napi::Number::New(info.Env(), -static_cast<double>(s));
}

// sealHeader(header, codec, payloadLen) -> 0 | -status: rewrites the codec and
// payload length of a valid header, with a fresh header checksum.
Napi::Value SealHeader(const Napi::CallbackInfo& info) {
  Bytes header = GetBytes(info[0], "header");
  uint32_t codec = info[1].As<Napi::Number>().Uint32Value();
  uint32_t payload = info[2].As<Napi::Number>().Uint32Value();
  hde::FrameHeader h;
  Status s = hde::parse_header_only(header.data, header.len, &h);
  if (s == Status::kOk && codec > static_cast<uint32_t>(hde::Codec::kZstd)) s = Status::kUnknownCodec;
  if (s == Status::kOk) {
    h.codec = static_cast<hde::Codec>(codec);
    h.payload_len = payload;
    hde::write_header(h, header.data);
  }
  return Napi::Number::New(info.Env(), -static_cast<double>(s));
}

// zeroPages(region, pageSize, simd, bitmap) -> number of all-zero pages | -status.
// Sets bit i of `bitmap` for each all-zero page i.
Napi::Value ZeroPages(const Napi::CallbackInfo& info) {
  Bytes region = GetBytes(info[0], "region");
  uint32_t page = info[1].As<Napi::Number>().Uint32Value();
  std::string simd = info[2].As<Napi::String>().Utf8Value();
  Bytes bitmap = GetBytes(info[3], "bitmap");
  hde::SimdPath path;
  const hde::Kernels* k = hde::parse_simd_path(simd.c_str(), &path) ? hde::select_kernels(path) : nullptr;
  const bool page_ok = page >= (1u << hde::kMinPageShift) && page <= (1u << hde::kMaxPageShift) && (page & (page - 1)) == 0;
  if (!k || !page_ok || region.len % page != 0 || bitmap.len < (region.len / page + 7) / 8) {
    return Napi::Number::New(info.Env(), -static_cast<double>(Status::kInvalidArgument));
  }
  const size_t pages = region.len / page;
  std::memset(bitmap.data, 0, (pages + 7) / 8);
  double count = 0;
  for (size_t i = 0; i < pages; i++) {
    if (k->is_zero(region.data + i * page, page)) {
      bitmap.data[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
      count++;
    }
  }
  return Napi::Number::New(info.Env(), count);
}

Napi::Value StatusNames(const Napi::CallbackInfo& info) {
  Napi::Array a = Napi::Array::New(info.Env());
  for (uint32_t i = 0; i <= static_cast<uint32_t>(kLastStatus); i++) {
    a.Set(i, Napi::String::New(info.Env(), status_name(static_cast<Status>(i))));
  }
  return a;
}

}  // namespace

void InitHde(Napi::Env env, Napi::Object exports) {
  exports.Set("HdeEncoder", EncoderWrap::Define(env));
  exports.Set("HdeDecoder", DecoderWrap::Define(env));
  exports.Set("hdeParseHeader", Napi::Function::New<ParseHeader>(env, "hdeParseHeader"));
  exports.Set("hdeSealHeader", Napi::Function::New<SealHeader>(env, "hdeSealHeader"));
  exports.Set("hdeZeroPages", Napi::Function::New<ZeroPages>(env, "hdeZeroPages"));
  exports.Set("statusNames", Napi::Function::New<StatusNames>(env, "statusNames"));
  Napi::Object limits = Napi::Object::New(env);
  limits.Set("headerSize", Napi::Number::New(env, hde::kHeaderSize));
  limits.Set("maxRecords", Napi::Number::New(env, hde::kMaxRecords));
  limits.Set("maxRawLen", Napi::Number::New(env, static_cast<double>(hde::kMaxRawLen)));
  exports.Set("hdeLimits", limits);
}

}  // namespace dwcp::binding
