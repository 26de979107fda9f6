// The slice of the verbs API the RDMA transport uses, as an interface: the
// real libibverbs behind it where rdma-core is installed (ibverbs.cc, opened
// at run time so one build serves hosts with and without it), and an
// in-process emulation in the tests (native/test/emulated_verbs.h), which is
// how the transport's logic is tested on machines without an RDMA NIC.
//
// Reliable-connected queue pairs only. One completion queue per device
// handle, shared by its queue pairs; work request ids say which QP and which
// operation a completion belongs to.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "util/status.h"

namespace dwcp::transport::rdma {

enum class WcStatus : uint8_t {
  kSuccess,
  kFlushed,        // the QP went to the error state with this request outstanding
  kRemoteAccess,   // bad rkey or address at the peer
  kRetryExceeded,  // the peer stopped answering (transport retries used up)
  kLocalError,
};

enum class WcOpcode : uint8_t { kSend, kWrite, kRecv, kRecvImm };

struct Completion {
  uint64_t wr_id = 0;
  WcStatus status = WcStatus::kSuccess;
  WcOpcode opcode = WcOpcode::kSend;
  uint32_t byte_len = 0;  // receives: bytes that arrived
  uint32_t imm = 0;       // kRecvImm: the sender's immediate value
};

// What one end sends the other out of band (over the TCP control stream)
// to bring a reliable-connected QP pair up.
struct Endpoint {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint16_t lid = 0;
  uint8_t gid[16] = {};
  uint32_t mtu = 4096;
};

// Who may touch registered memory: our adapter only (what we send from,
// where receives land), or the peer's RDMA WRITEs too (the ring).
enum class Access : uint8_t { kLocal, kRemoteWrite };

// Registered memory: local key for our own requests, remote key for the
// peer's RDMA WRITEs into it.
struct Region {
  uint8_t* addr = nullptr;
  size_t len = 0;
  uint32_t lkey = 0;
  uint32_t rkey = 0;
};

class QueuePair {
 public:
  virtual ~QueuePair() = default;
  virtual Endpoint local() const = 0;
  // INIT -> RTR -> RTS against the peer's endpoint.
  virtual Status connect(const Endpoint& peer) = 0;
  // A receive of up to `len` bytes into `mr` at `offset`.
  virtual Status post_recv(uint64_t wr_id, const Region& mr, size_t offset, size_t len) = 0;
  // A SEND of `len` bytes of `mr` from `offset`; consumes one receive at the peer.
  virtual Status post_send(uint64_t wr_id, const Region& mr, size_t offset, size_t len) = 0;
  // An RDMA WRITE of `len` bytes of `mr` from `offset` to the peer's
  // `remote_addr` under `rkey`, with immediate `imm` (consumes one receive
  // at the peer, which completes as kRecvImm with `len` and `imm`).
  virtual Status post_write_imm(uint64_t wr_id, const Region& mr, size_t offset, size_t len, uint64_t remote_addr,
                                uint32_t rkey, uint32_t imm) = 0;
};

struct PortInfo {
  uint8_t number = 1;
  std::string state;       // "active", "down", ...
  std::string link_layer;  // "InfiniBand" or "Ethernet" (RoCE)
  uint32_t mtu = 0;        // active MTU, bytes
  int gid_index = 0;       // the GID the transport picks (see Verbs::open)
  std::string gid;         // that GID, as text
};

struct DeviceInfo {
  std::string name;
  std::vector<PortInfo> ports;
};

// An opened device with a protection domain and a completion queue.
class Device {
 public:
  virtual ~Device() = default;
  virtual Status register_memory(void* addr, size_t len, Access access, Region* out) = 0;
  virtual void deregister(const Region& r) = 0;
  virtual std::unique_ptr<QueuePair> create_qp(uint32_t max_send, uint32_t max_recv, Status* st) = 0;
  // Up to `n` completions of any of this device's QPs; 0 when none.
  virtual size_t poll(Completion* out, size_t n) = 0;
  // Readable when completions may be waiting (an epoll-able fd); re-armed by poll().
  virtual int event_fd() const = 0;
  // Completions the queue holds: requests outstanding on all QPs together
  // (sends and posted receives) must stay within it, or it overruns.
  virtual size_t cq_capacity() const = 0;
};

class Verbs {
 public:
  virtual ~Verbs() = default;
  virtual std::vector<DeviceInfo> devices() = 0;
  // `gid_index` < 0: on RoCE ports the first RoCE v2 GID holding an IPv4
  // address (as rdma_cm picks), else the first RoCE v2 one, else 0; on
  // InfiniBand 0.
  virtual std::unique_ptr<Device> open(const std::string& name, int gid_index, Status* st) = 0;
};

// libibverbs, opened at run time; null with *error set when it is not
// installed or this build has no RDMA support (no verbs headers).
std::unique_ptr<Verbs> open_ibverbs(std::string* error);

}  // namespace dwcp::transport::rdma
