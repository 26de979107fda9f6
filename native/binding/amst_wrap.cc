// JS class AmstEngine over the TCP engine. Events leave the I/O thread in
// batches through a thread-safe function; received messages become external
// Buffers that own their bytes, or views of lent slabs (SlabLender). Sent
// Buffers are not copied: TypeScript keeps each one referenced until its
// kSendDone or kSendFailed event.
#include <napi.h>
#include <uv.h>

#include <deque>
#include <functional>
#include <cstring>
#include <memory>
#include <mutex>
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
using SlabBytes = transport::Bytes;

// A slab stays with the lender; only owned messages are freed here.
void FreeBatch(Batch* b) {
  for (auto& e : *b) {
    if (e.slab < 0) delete e.data;
  }
  delete b;
}

// Slabs for connections that lend received messages (`lendBuffers`). Each
// slab becomes one external ArrayBuffer, once; its messages reach JS as
// views of it, valid until their listeners return, and the slab then goes
// back to the I/O thread. V8 sees no new external memory per message (which
// is what sets off its major collections in a bulk receive), and the slab
// is still in cache when the next message lands in it. A mutex, not a ring:
// it is taken twice per message of 64 KiB or more.
class SlabLender : public transport::Lender {
 public:
  static constexpr size_t kMaxBytes = 64u << 20;  // per engine; past it, messages are owned Buffers

  SlabBytes* take(size_t n, int32_t* slab) override {
    std::lock_guard<std::mutex> lock(mu_);
    Slab* best = nullptr;
    for (Slab& s : slabs_) {
      if (s.free && s.bytes->capacity() >= n && (!best || s.bytes->capacity() < best->bytes->capacity())) best = &s;
    }
    if (!best) {
      const size_t cls = transport::BufferPool::size_class(n);
      if (total_ + cls > kMaxBytes) return nullptr;
      Slab& s = slabs_.emplace_back();
      s.owned = std::make_unique<SlabBytes>();
      s.owned->reserve(cls);
      s.bytes = s.owned.get();
      s.index = static_cast<int32_t>(slabs_.size() - 1);
      total_ += cls;
      best = &s;
    }
    best->free = false;
    best->bytes->resize(n);  // within capacity: the data does not move
    *slab = best->index;
    return best->bytes;
  }

  void give(int32_t slab) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (slab >= 0 && static_cast<size_t>(slab) < slabs_.size()) slabs_[static_cast<size_t>(slab)].free = true;
  }

  // JS thread: the slab as an ArrayBuffer of its whole capacity, made at
  // its first use. From then on the ArrayBuffer owns the bytes, and this
  // lender keeps it alive (a strong reference) for as long as it lends it.
  Napi::ArrayBuffer array_buffer(Napi::Env env, int32_t slab) {
    Slab* s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      s = &slabs_[static_cast<size_t>(slab)];  // deque: stays put as slabs are added
    }
    if (!s->ref.IsEmpty()) return s->ref.Value();
    SlabBytes* b = s->owned.release();
    auto ab = Napi::ArrayBuffer::New(
        env, b->data(), b->capacity(), [](Napi::Env, void*, SlabBytes* hint) { delete hint; }, b);
    s->ref = Napi::Persistent(ab);
    return ab;
  }

 private:
  struct Slab {
    SlabBytes* bytes = nullptr;
    std::unique_ptr<SlabBytes> owned;   // until its ArrayBuffer exists
    Napi::Reference<Napi::ArrayBuffer> ref;  // JS thread only
    int32_t index = 0;
    bool free = true;
  };
  std::mutex mu_;
  std::deque<Slab> slabs_;
  size_t total_ = 0;
};

// The thread-safe function's context.
struct Delivery {
  Engine* engine = nullptr;  // null once shut down
  SlabLender lender;
};

// Received bytes in flight between the I/O thread and JS; above this the
// engine stops reading its sockets until JS catches up.
constexpr uint64_t kMaxUndelivered = 256ull << 20;

// Messages up to this size are copied into one Buffer per batch and handed
// to JS as slices of it: a copy of a few KiB is cheaper than an external
// Buffer with a finalizer per message.
constexpr size_t kPackLimit = 4096;

// Fields per event in the array passed to JS.
constexpr size_t kEventFields = 7;

// Runs on the JS thread. JS gets (fields, buffers, arena): `fields` holds
// kEventFields numbers per event (type, id, value, listener, status,
// os error, extra); a message's `listener` slot is its offset in `arena`, or
// -1 when its bytes are the next entry of `buffers`, `extra` its length, and
// `value` the count of messages in it when it is a pack (else 0).
// Consumes `batch`; tells `engine` (when still there) what JS now holds.
std::vector<napi_value> EventArgs(Napi::Env env, Delivery* delivery, Batch* batch) {
  size_t packed = 0;
  for (const Event& e : *batch) {
    if (e.data && e.slab < 0 && e.data->size() <= kPackLimit) packed += e.data->size();
  }
  Napi::Float64Array fields = Napi::Float64Array::New(env, batch->size() * kEventFields);
  double* f = fields.Data();
  Napi::Array buffers = Napi::Array::New(env);
  Napi::Value arena = env.Null();
  uint8_t* arena_bytes = nullptr;
  if (packed) {
    auto a = Napi::Buffer<uint8_t>::New(env, packed);
    arena_bytes = a.Data();
    arena = a;
  }
  size_t arena_used = 0;
  uint32_t nbuf = 0;
  uint64_t received = 0;
  for (size_t i = 0; i < batch->size(); i++) {
    Event& e = (*batch)[i];
    double* r = f + i * kEventFields;
    r[0] = static_cast<double>(e.type);
    r[1] = static_cast<double>(e.id);
    r[2] = static_cast<double>(e.value);
    r[3] = static_cast<double>(e.listener);
    r[4] = static_cast<double>(e.status);
    r[5] = e.os_error;
    r[6] = static_cast<double>(e.extra);
    if (!e.data) continue;
    transport::Bytes* v = e.data;
    e.data = nullptr;
    received += v->size();
    r[2] = static_cast<double>(e.extra);
    r[5] = e.slab;  // -1: an owned Buffer
    r[6] = static_cast<double>(v->size());
    if (e.slab >= 0) {
      r[3] = -1;
      buffers.Set(nbuf++, delivery->lender.array_buffer(env, e.slab));
      continue;
    }
    if (v->size() <= kPackLimit) {
      std::memcpy(arena_bytes + arena_used, v->data(), v->size());
      r[3] = static_cast<double>(arena_used);
      arena_used += v->size();
      delete v;
      continue;
    }
    r[3] = -1;
    // V8 counts the bytes of an external Buffer against its heap limits by
    // itself (telling it again doubles the major GCs of a bulk receive).
    // The bytes go back to the pool when the Buffer is collected.
    buffers.Set(nbuf++, Napi::Buffer<uint8_t>::New(
                            env, v->data(), v->size(),
                            [](Napi::Env, uint8_t*, transport::Bytes* hint) {
                              transport::BufferPool::shared().give(std::move(*hint));
                              delete hint;
                            },
                            v));
  }
  FreeBatch(batch);
  if (received && delivery->engine) delivery->engine->delivered(received);
  return {fields, buffers, arena};
}

void CallJs(Napi::Env env, Napi::Function callback, Delivery* delivery, Batch* batch) {
  if (env == nullptr) {  // the function is being torn down
    FreeBatch(batch);
    return;
  }
  callback.Call(EventArgs(env, delivery, batch));
}

using Tsfn = Napi::TypedThreadSafeFunction<Delivery, Batch, CallJs>;

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

// An owner-driven engine's events arrive on the JS thread, inside
// EngineWrap::OnPoll; they are passed on from there.
class LoopSink : public transport::tcp::EventSink {
 public:
  std::function<void(std::vector<Event>&)> fn;
  void deliver(std::vector<Event>& events) override { fn(events); }
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "AmstEngine",
                       {InstanceMethod<&EngineWrap::Listen>("listen"),
                        InstanceMethod<&EngineWrap::Connect>("connect"),
                        InstanceMethod<&EngineWrap::Send>("send"),
                        InstanceMethod<&EngineWrap::SendMany>("sendMany"),
                        InstanceMethod<&EngineWrap::Close>("close"),
                        InstanceMethod<&EngineWrap::Destroy>("destroy"),
                        InstanceMethod<&EngineWrap::KillStream>("killStream"),
                        InstanceMethod<&EngineWrap::SetStreams>("setStreams"),
                        InstanceMethod<&EngineWrap::PauseReading>("pauseReading"),
                        InstanceMethod<&EngineWrap::SetCongestion>("setCongestion"),
                        InstanceMethod<&EngineWrap::Stats>("stats"),
                        InstanceMethod<&EngineWrap::Addresses>("addresses"),
                        InstanceMethod<&EngineWrap::Release>("release"),
                        InstanceMethod<&EngineWrap::SetBusyPoll>("setBusyPoll"),
                        InstanceMethod<&EngineWrap::Ref>("ref"),
                        InstanceMethod<&EngineWrap::Unref>("unref"),
                        InstanceMethod<&EngineWrap::Shutdown>("shutdown")});
  }

  // new AmstEngine(onEvents, io): io "thread" runs the engine on an I/O
  // thread of its own; "loop" runs it on this thread's event loop (fewer
  // wake-ups per round trip, no parallelism with JS).
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "AmstEngine needs an event callback");
    const bool on_loop = info[1].IsString() && info[1].As<Napi::String>().Utf8Value() == "loop";
    transport::Limits limits;
    limits.max_undelivered_bytes = kMaxUndelivered;
    if (on_loop) {
      callback_ = Napi::Persistent(info[0].As<Napi::Function>());
      async_ = std::make_unique<Napi::AsyncContext>(env, "novacron.amst.events");
      auto sink = std::make_unique<LoopSink>();
      sink->fn = [this](std::vector<Event>& events) { DeliverOnLoop(events); };
      sink_ = std::move(sink);
      engine_ = std::make_unique<Engine>(sink_.get(), limits, false);
      uv_loop_t* loop = nullptr;
      napi_get_uv_event_loop(env, &loop);
      poll_ = new uv_poll_t;
      poll_->data = this;
      if (!loop || uv_poll_init(loop, poll_, engine_->poll_fd()) != 0) {
        delete poll_;
        poll_ = nullptr;
        engine_.reset();
        throw Napi::Error::New(env, "AmstEngine: cannot watch the engine from the event loop");
      }
      uv_poll_start(poll_, UV_READABLE, &EngineWrap::OnPoll);
      uv_unref(reinterpret_cast<uv_handle_t*>(poll_));  // TypeScript refs it while something is open
      idle_ = new uv_idle_t;
      idle_->data = this;
      uv_idle_init(loop, idle_);
      uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
      tsfn_released_ = true;
    } else {
      tsfn_ = Tsfn::New(env, info[0].As<Napi::Function>(), "novacron.amst.events", 0, 1, &delivery_);
      tsfn_.Unref(env);  // TypeScript refs it while connections or listeners exist
      sink_ = std::make_unique<TsfnSink>(tsfn_);
      engine_ = std::make_unique<Engine>(sink_.get(), limits);
    }
    engine_->set_lender(&delivery_.lender);
    delivery_.engine = engine_.get();
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

  static void OnPoll(uv_poll_t* handle, int, int) {
    auto* self = static_cast<EngineWrap*>(handle->data);
    if (!self->engine_) return;
    self->polling_ = true;
    self->engine_->poll_once();
    self->polling_ = false;
    self->Busy();
    // JS asked to shut down while its callback ran inside poll_once().
    if (self->stop_deferred_) self->Stop();
  }

  // Busy polling (loop mode): for busy_ns_ after the last I/O, an active
  // idle handle keeps the event loop polling with a zero timeout instead of
  // sleeping, so a reply is seen as it lands rather than after the wake-up
  // of an idle CPU (tens of microseconds on a VM). JS runs as usual meanwhile.
  void Busy() {
    if (busy_ns_ == 0 || !idle_) return;
    last_io_ns_ = uv_hrtime();
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(idle_))) uv_idle_start(idle_, &EngineWrap::OnIdle);
  }

  static void OnIdle(uv_idle_t* handle) {
    auto* self = static_cast<EngineWrap*>(handle->data);
    if (uv_hrtime() - self->last_io_ns_ > self->busy_ns_) uv_idle_stop(handle);
  }

  void DeliverOnLoop(std::vector<Event>& events) {
    auto* batch = new Batch(std::move(events));
    events.clear();
    Napi::Env env(env_);
    Napi::HandleScope scope(env);
    try {
      std::vector<napi_value> args = EventArgs(env, &delivery_, batch);
      // MakeCallback, not Call: this is a fresh entry from the event loop,
      // so promises resolved by the handler settle (microtasks run) after it.
      callback_.MakeCallback(Napi::Object::New(env), args, *async_);
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env_, e.Value());  // an exception in a handler is uncaught, as in any event
    }
  }

  // Joins the I/O thread first, so nothing calls the function after release.
  void Stop() {
    if (polling_) {
      stop_deferred_ = true;
      return;
    }
    stop_deferred_ = false;
    if (poll_) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (idle_) {
      uv_idle_stop(idle_);
      uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
      idle_ = nullptr;
    }
    delivery_.engine = nullptr;
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
    const bool lend = info[2].ToBoolean().Value();
    const auto transport = static_cast<transport::tcp::Transport>(info[3].As<Napi::Number>().Uint32Value());
    transport::tcp::RdmaOptions rdma;
    rdma.device = info[4].As<Napi::String>().Utf8Value();
    rdma.gid_index = info[5].As<Napi::Number>().Int32Value();
    rdma.ring_bytes = info[6].As<Napi::Number>().Uint32Value();
    const uint32_t handshake_ms = info[7].As<Napi::Number>().Uint32Value();
    transport::tcp::SocketOptions accepted;
    accepted.peer_timeout_ms = info[8].As<Napi::Number>().Uint32Value();
    accepted.congestion = info[9].As<Napi::String>().Utf8Value();
    accepted.send_buffer = info[10].As<Napi::Number>().Int32Value();
    accepted.recv_buffer = info[11].As<Napi::Number>().Int32Value();
    return Napi::Number::New(info.Env(), static_cast<double>(e.listen(host, port, lend, transport, rdma, handshake_ms, accepted)));
  }

  // release(slab): the listeners of a message lent from `slab` have returned.
  Napi::Value Release(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    delivery_.lender.give(info[0].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
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
    opts.redial = o.Get("redial").ToBoolean().Value();
    opts.socket.zerocopy = o.Get("zeroCopy").ToBoolean().Value();
    opts.socket.splice = o.Get("splice").ToBoolean().Value();
    opts.socket.peer_timeout_ms = o.Get("peerTimeoutMs").As<Napi::Number>().Uint32Value();
    opts.connect_timeout_ms = o.Get("connectTimeoutMs").As<Napi::Number>().Uint32Value();
    opts.lend = o.Get("lendBuffers").ToBoolean().Value();
    // 0 tcp, 1 auto, 2 rdma (TypeScript checked the values).
    opts.transport = static_cast<transport::tcp::Transport>(o.Get("transport").As<Napi::Number>().Uint32Value());
    opts.rdma.lanes = static_cast<uint16_t>(o.Get("rdmaLanes").As<Napi::Number>().Uint32Value());
    opts.rdma.ring_bytes = o.Get("rdmaRingBytes").As<Napi::Number>().Uint32Value();
    opts.rdma.device = o.Get("rdmaDevice").As<Napi::String>().Utf8Value();
    opts.rdma.gid_index = o.Get("rdmaGidIndex").As<Napi::Number>().Int32Value();
    return Napi::Number::New(info.Env(), static_cast<double>(e.connect(opts)));
  }

  // send(conn, messageId, buffer): the buffer must stay referenced and
  // unchanged until the message's sendDone/sendFailed event.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Engine& e = engine(info);
    Bytes b = GetBytes(info[2], "message");
    e.send(Id(info[0]), Id(info[1]), b.data, b.len);
    Busy();
    return info.Env().Undefined();
  }

  // setBusyPoll(microseconds): loop mode only (0 turns it off).
  Napi::Value SetBusyPoll(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    busy_ns_ = static_cast<uint64_t>(info[0].As<Napi::Number>().Uint32Value()) * 1000;
    return info.Env().Undefined();
  }

  // sendMany(conn, firstId, [buffers], packed?: Uint8Array): the same rules
  // as send, per buffer; packed[i] != 0 marks buffer i as a pack of small
  // messages (see kFlagPacked), which TypeScript builds: copying a 64-byte
  // message there costs a fraction of one trip through N-API per message.
  Napi::Value SendMany(const Napi::CallbackInfo& info) {
    Engine& e = engine(info);
    if (!info[2].IsArray()) ThrowStatus(info.Env(), Status::kInvalidArgument, "sendMany needs an array of buffers");
    Napi::Array arr = info[2].As<Napi::Array>();
    Bytes flags{nullptr, 0};
    if (info.Length() > 3 && !info[3].IsUndefined()) flags = GetBytes(info[3], "packed flags");
    std::vector<transport::tcp::SendItem> messages;
    messages.reserve(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); i++) {
      Bytes b = GetBytes(arr.Get(i), "message");
      const bool packed = i < flags.len && flags.data[i] != 0;
      messages.push_back({b.data, b.len, packed ? transport::kFlagPacked : uint8_t{0}});
    }
    e.send_many(Id(info[0]), Id(info[1]), std::move(messages));
    Busy();
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

  Napi::Value PauseReading(const Napi::CallbackInfo& info) {
    engine(info).pause_reading(Id(info[0]), info[1].ToBoolean().Value());
    return info.Env().Undefined();
  }

  Napi::Value SetStreams(const Napi::CallbackInfo& info) {
    engine(info).set_streams(Id(info[0]), static_cast<uint16_t>(info[1].As<Napi::Number>().Uint32Value()));
    return info.Env().Undefined();
  }

  // setCongestion(conn, name) -> 0 or an errno.
  Napi::Value SetCongestion(const Napi::CallbackInfo& info) {
    const int err = engine(info).set_congestion(Id(info[0]), info[1].As<Napi::String>().Utf8Value());
    return Napi::Number::New(info.Env(), err);
  }

  // addresses(conn) -> { localAddress, localPort, remoteAddress, remotePort } or null.
  Napi::Value Addresses(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    transport::tcp::Endpoint local, remote;
    if (!engine(info).addresses(Id(info[0]), &local, &remote)) return env.Null();
    Napi::Object o = Napi::Object::New(env);
    o.Set("localAddress", local.address);
    o.Set("localPort", local.port);
    o.Set("remoteAddress", remote.address);
    o.Set("remotePort", remote.port);
    return o;
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
    o.Set("zeroCopySends", num(st.zerocopy_sends));
    o.Set("zeroCopyCopied", num(st.zerocopy_copied));
    o.Set("splicedBytes", num(st.spliced_bytes));
    o.Set("transport", st.rdma ? "rdma" : "tcp");
    o.Set("rdmaLanes", num(st.lanes));
    o.Set("laneBytesSent", num(st.lane_bytes_sent));
    o.Set("laneBytesReceived", num(st.lane_bytes_received));
    o.Set("sendBytesPerSec", Napi::Number::New(env, st.send_rate));
    o.Set("receiveBytesPerSec", Napi::Number::New(env, st.receive_rate));
    Napi::Array streams = Napi::Array::New(env, st.streams.size());
    for (size_t i = 0; i < st.streams.size(); i++) {
      const auto& s = st.streams[i];
      Napi::Object so = Napi::Object::New(env);
      so.Set("alive", s.alive);
      so.Set("bytesSent", num(s.bytes_sent));
      so.Set("bytesReceived", num(s.bytes_received));
      so.Set("sendBytesPerSec", Napi::Number::New(env, s.send_rate));
      so.Set("receiveBytesPerSec", Napi::Number::New(env, s.receive_rate));
      so.Set("rttUs", num(s.rtt_us));
      so.Set("rttVarUs", num(s.rtt_var_us));
      so.Set("retransmits", num(s.total_retrans));
      so.Set("cwnd", num(s.snd_cwnd));
      so.Set("congestion", s.congestion);
      so.Set("sendBufferBytes", num(static_cast<uint64_t>(s.send_buffer)));
      so.Set("recvBufferBytes", num(static_cast<uint64_t>(s.recv_buffer)));
      streams.Set(static_cast<uint32_t>(i), so);
    }
    o.Set("streams", streams);
    return o;
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    else if (!tsfn_released_) tsfn_.Ref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    else if (!tsfn_released_) tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    CheckTag(info, &kEngineTag, "AmstEngine");
    Stop();
    return info.Env().Undefined();
  }

  Tsfn tsfn_;
  bool tsfn_released_ = false;
  Napi::FunctionReference callback_;         // loop mode
  std::unique_ptr<Napi::AsyncContext> async_;  // loop mode
  uv_poll_t* poll_ = nullptr;                  // loop mode; freed by its close callback
  uv_idle_t* idle_ = nullptr;                  // loop mode: busy polling; likewise
  uint64_t busy_ns_ = 0;
  uint64_t last_io_ns_ = 0;
  bool polling_ = false;
  bool stop_deferred_ = false;
  std::unique_ptr<transport::tcp::EventSink> sink_;
  Delivery delivery_;  // before engine_: its connections give slabs back as they go
  std::unique_ptr<Engine> engine_;
  bool hooked_ = false;
  napi_env env_ = nullptr;
};

}  // namespace

void InitAmst(Napi::Env env, Napi::Object exports) {
  exports.Set("AmstEngine", EngineWrap::Define(env));
}

}  // namespace dwcp::binding
