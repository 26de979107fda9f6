// JS class AmstEngine over the TCP engine. Events leave the I/O thread in
// batches through a thread-safe function; received messages become external
// Buffers that own their bytes. Sent Buffers are not copied: TypeScript keeps
// each one referenced until its kSendDone or kSendFailed event.
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "transport/tcp/engine.h"
#include "util.h"

namespace dwcp::binding {
namespace {

using transport::tcp::ConnectOptions;
using transport::tcp::ConnectionStats;
using transport::tcp::Engine;
using transport::tcp::Event;

constexpr napi_type_tag kEngineTag = {0x6e6f7661a1c3e003ull, 0x414d5354454e4731ull};

using Batch = std::vector<Event>;

void FreeBatch(Batch* b) {
  for (auto& e : *b) delete e.data;
  delete b;
}

const char* TypeName(Event::Type t) {
  switch (t) {
    case Event::Type::kListening: return "listening";
    case Event::Type::kIncoming: return "incoming";
    case Event::Type::kConnected: return "connected";
    case Event::Type::kMessage: return "message";
    case Event::Type::kSendDone: return "sendDone";
    case Event::Type::kSendFailed: return "sendFailed";
    case Event::Type::kStreamLost: return "streamLost";
    case Event::Type::kClosed: return "closed";
    case Event::Type::kError: return "error";
  }
  return "unknown";
}

// Received bytes in flight between the I/O thread and JS; above this the
// engine stops reading its sockets until JS catches up.
constexpr uint64_t kMaxUndelivered = 256ull << 20;

// Runs on the JS thread: turns a batch into an array of plain objects and
// passes it to the JS callback.
void CallJs(Napi::Env env, Napi::Function callback, Engine** engine, Batch* batch) {
  if (env == nullptr) {  // the function is being torn down
    FreeBatch(batch);
    return;
  }
  Napi::Array arr = Napi::Array::New(env, batch->size());
  uint64_t received = 0;
  for (size_t i = 0; i < batch->size(); i++) {
    Event& e = (*batch)[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("type", TypeName(e.type));
    o.Set("id", Napi::Number::New(env, static_cast<double>(e.id)));
    o.Set("value", Napi::Number::New(env, static_cast<double>(e.value)));
    if (e.listener) o.Set("listener", Napi::Number::New(env, static_cast<double>(e.listener)));
    if (e.status != Status::kOk) o.Set("status", status_name(e.status));
    if (e.os_error) o.Set("osError", Napi::Number::New(env, e.os_error));
    if (e.data) {
      std::vector<uint8_t>* v = e.data;
      e.data = nullptr;
      // Tell V8 about the native bytes, or it would not collect received
      // Buffers under memory pressure (it sees only the small JS objects).
      const auto size = static_cast<int64_t>(v->size());
      received += v->size();
      Napi::MemoryManagement::AdjustExternalMemory(env, size);
      o.Set("data", Napi::Buffer<uint8_t>::New(
                        env, v->data(), v->size(),
                        [](Napi::Env fenv, uint8_t*, std::vector<uint8_t>* hint) {
                          Napi::MemoryManagement::AdjustExternalMemory(fenv, -static_cast<int64_t>(hint->size()));
                          delete hint;
                        },
                        v));
    }
    arr.Set(static_cast<uint32_t>(i), o);
  }
  FreeBatch(batch);
  if (received && *engine) (*engine)->delivered(received);
  callback.Call({arr});
}

using Tsfn = Napi::TypedThreadSafeFunction<Engine*, Batch, CallJs>;

class TsfnSink : public transport::tcp::EventSink {
 public:
  explicit TsfnSink(Tsfn tsfn) : tsfn_(tsfn) {}
  void deliver(std::vector<Event>& events) override {
    auto* batch = new Batch(std::move(events));
    events.clear();
    // Unbounded queue: the I/O thread must never wait for JS, since JS may
    // be waiting for the I/O thread (a full command ring).
    if (tsfn_.NonBlockingCall(batch) != napi_ok) FreeBatch(batch);
  }

 private:
  Tsfn tsfn_;
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AmstEngine",
                       {InstanceMethod<&EngineWrap::Listen>("listen"),
                        InstanceMethod<&EngineWrap::Connect>("connect"),
                        InstanceMethod<&EngineWrap::Send>("send"),
                        InstanceMethod<&EngineWrap::Close>("close"),
                        InstanceMethod<&EngineWrap::Destroy>("destroy"),
                        InstanceMethod<&EngineWrap::KillStream>("killStream"),
                        InstanceMethod<&EngineWrap::Stats>("stats"),
                        InstanceMethod<&EngineWrap::Ref>("ref"),
                        InstanceMethod<&EngineWrap::Unref>("unref"),
                        InstanceMethod<&EngineWrap::Shutdown>("shutdown")});
  }

  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "AmstEngine needs an event callback");
    tsfn_ = Tsfn::New(env, info[0].As<Napi::Function>(), "novacron.amst.events", 0, 1, &engine_raw_);
    tsfn_.Unref(env);  // TypeScript refs it while connections or listeners exist
    sink_ = std::make_unique<TsfnSink>(tsfn_);
    transport::Limits limits;
    limits.max_undelivered_bytes = kMaxUndelivered;
    engine_ = std::make_unique<Engine>(sink_.get(), limits);
    engine_raw_ = engine_.get();
    TagObject(env, info.This().As<Napi::Object>(), &kEngineTag);
    napi_add_env_cleanup_hook(env, &EngineWrap::Cleanup, this);
    hooked_ = true;
    env_ = env;
  }

  ~EngineWrap() override {
    if (hooked_) napi_remove_env_cleanup_hook(env_, &EngineWrap::Cleanup, this);
    Stop();
  }

 private:
  static void Cleanup(void* arg) {
    auto* self = static_cast<EngineWrap*>(arg);
    self->hooked_ = false;
    self->Stop();
  }

  // Joins the I/O thread first, so nothing calls the function after release.
  void Stop() {
    engine_raw_ = nullptr;
    engine_.reset();
    if (tsfn_released_) return;
    tsfn_released_ = true;
    tsfn_.Release();
  }

  Engine& engine(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    if (!engine_) ThrowStatus(info.Env(), Status::kClosed, "AmstEngine is shut down");
    return *engine_;
  }

  static uint64_t Id(const Napi::Value& v) { return static_cast<uint64_t>(v.As<Napi::Number>().DoubleValue()); }

  Napi::Value Listen(const Napi::CallbackInfo& info) {
    Engine& e = engine(info);
    const std::string host = info[0].As<Napi::String>().Utf8Value();
    const auto port = static_cast<uint16_t>(info[1].As<Napi::Number>().Uint32Value());
    return Napi::Number::New(info.Env(), static_cast<double>(e.listen(host, port)));
  }

  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Engine& e = engine(info);
    Napi::Object o = info[0].As<Napi::Object>();
    ConnectOptions opts;
    opts.host = o.Get("host").As<Napi::String>().Utf8Value();
    opts.port = static_cast<uint16_t>(o.Get("port").As<Napi::Number>().Uint32Value());
    opts.streams = static_cast<uint16_t>(o.Get("streams").As<Napi::Number>().Uint32Value());
    opts.chunk_shift = o.Get("chunkShift").As<Napi::Number>().Uint32Value();
    opts.socket.congestion = o.Get("congestion").As<Napi::String>().Utf8Value();
    opts.socket.send_buffer = o.Get("sendBuffer").As<Napi::Number>().Int32Value();
    opts.socket.recv_buffer = o.Get("recvBuffer").As<Napi::Number>().Int32Value();
    return Napi::Number::New(info.Env(), static_cast<double>(e.connect(opts)));
  }

  // send(conn, messageId, buffer): the buffer must stay referenced and
  // unchanged until the message's sendDone/sendFailed event.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Engine& e = engine(info);
    Bytes b = GetBytes(info[2], "message");
    e.send(Id(info[0]), Id(info[1]), b.data, b.len);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    engine(info).close(Id(info[0]));
    return info.Env().Undefined();
  }

  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    engine(info).destroy(Id(info[0]));
    return info.Env().Undefined();
  }

  Napi::Value KillStream(const Napi::CallbackInfo& info) {
    engine(info).kill_stream(Id(info[0]), info[1].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ConnectionStats st;
    if (!engine(info).stats(Id(info[0]), &st)) return env.Null();
    auto num = [&](uint64_t v) { return Napi::Number::New(env, static_cast<double>(v)); };
    Napi::Object o = Napi::Object::New(env);
    o.Set("messagesSent", num(st.messages_sent));
    o.Set("messagesReceived", num(st.messages_received));
    o.Set("bytesSent", num(st.bytes_sent));
    o.Set("bytesReceived", num(st.bytes_received));
    o.Set("chunksResent", num(st.chunks_resent));
    Napi::Array streams = Napi::Array::New(env, st.streams.size());
    for (size_t i = 0; i < st.streams.size(); i++) {
      const auto& s = st.streams[i];
      Napi::Object so = Napi::Object::New(env);
      so.Set("alive", s.alive);
      so.Set("bytesSent", num(s.bytes_sent));
      so.Set("bytesReceived", num(s.bytes_received));
      so.Set("rttUs", num(s.rtt_us));
      so.Set("rttVarUs", num(s.rtt_var_us));
      so.Set("retransmits", num(s.total_retrans));
      so.Set("cwnd", num(s.snd_cwnd));
      so.Set("congestion", s.congestion);
      streams.Set(static_cast<uint32_t>(i), so);
    }
    o.Set("streams", streams);
    return o;
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    if (!tsfn_released_) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    if (!tsfn_released_) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    Stop();
    return info.Env().Undefined();
  }

  Tsfn tsfn_;
  bool tsfn_released_ = false;
  std::unique_ptr<TsfnSink> sink_;
  std::unique_ptr<Engine> engine_;
  Engine* engine_raw_ = nullptr;  // the thread-safe function's context
  bool hooked_ = false;
  napi_env env_ = nullptr;
};

}  // namespace

void InitAmst(Napi::Env env, Napi::Object exports) {
  exports.Set("AmstEngine", EngineWrap::Define(env));
}

}  // namespace dwcp::binding
