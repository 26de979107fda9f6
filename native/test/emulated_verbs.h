// An in-process emulation of the verbs interface (transport/rdma/verbs.h)
// for tests: devices on one fabric, reliable-connected QPs that find their
// peer by QP number, memory keys checked on every RDMA WRITE, completions in
// a queue per device. Operations complete when posted (a perfect, instant
// network), in order per QP, as RC guarantees. What real hardware would
// report as an error is reported here too: a SEND or WRITE-with-immediate
// with no receive posted at the peer (a receiver-not-ready the transport's
// credits must prevent), a payload longer than the receive, a bad rkey or
// an address outside the region, a QP in the error state (fail_qp).
// Test code only: the RDMA path has not run on hardware.
#pragma once
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "transport/rdma/verbs.h"

namespace dwcp::test {

using namespace dwcp::transport::rdma;

class EmulatedFabric;

class EmulatedDevice : public Device {
 public:
  EmulatedDevice(EmulatedFabric* fabric, std::string name, size_t cq_capacity)
      : cq_capacity_(cq_capacity), fabric_(fabric), name_(std::move(name)), efd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~EmulatedDevice() override { ::close(efd_); }
  Status register_memory(void* addr, size_t len, Access access, Region* out) override;
  void deregister(const Region& r) override;
  std::unique_ptr<QueuePair> create_qp(uint32_t max_send, uint32_t max_recv, Status* st) override;
  size_t poll(Completion* out, size_t n) override {
    std::lock_guard<std::mutex> lock(mu_);
    size_t k = 0;
    while (k < n && !cq_.empty()) {
      out[k++] = cq_.front();
      cq_.pop_front();
    }
    uint64_t v;
    if (cq_.empty()) (void)!::read(efd_, &v, sizeof(v));
    return k;
  }
  int event_fd() const override { return efd_; }
  size_t cq_capacity() const override { return cq_capacity_; }
  size_t cq_capacity_;
  void complete(const Completion& c) {
    std::lock_guard<std::mutex> lock(mu_);
    cq_.push_back(c);
    const uint64_t one = 1;
    (void)!::write(efd_, &one, sizeof(one));
  }
  size_t registered() const { return regions_; }

 private:
  friend class EmulatedFabric;
  EmulatedFabric* fabric_;
  std::string name_;
  int efd_;
  std::mutex mu_;
  std::deque<Completion> cq_;
  size_t regions_ = 0;
};

class EmulatedQp;

// A host with rdma-core but no RDMA device.
class NoDevices : public Verbs {
 public:
  std::vector<DeviceInfo> devices() override { return {}; }
  std::unique_ptr<Device> open(const std::string&, int, Status* st) override {
    *st = Status::kDeviceError;
    return nullptr;
  }
};

// Every device, QP and memory region of one test.
class EmulatedFabric : public Verbs {
 public:
  std::vector<DeviceInfo> devices() override {
    DeviceInfo d;
    d.name = "emu0";
    d.ports.push_back(PortInfo{1, "active", "Ethernet", 4096, 0, "fe80::1"});
    return {d};
  }
  std::unique_ptr<Device> open(const std::string& name, int, Status* st) override {
    *st = Status::kOk;
    return std::make_unique<EmulatedDevice>(this, name, cq_capacity);
  }
  size_t cq_capacity = 1u << 20;  // of devices opened from now on
  // Puts QP `qpn` in the error state, as a fatal event would.
  void fail_qp(uint32_t qpn);
  // The QPs that exist now, oldest first.
  std::vector<uint32_t> qpns() {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<uint32_t> out;
    for (auto& [n, qp] : qps) out.push_back(n);
    return out;
  }

  struct Mr {
    uint8_t* addr;
    size_t len;
    bool remote_write;
  };
  std::mutex mu;
  std::map<uint32_t, EmulatedQp*> qps;
  std::map<uint32_t, Mr> rkeys;
  uint32_t next_qpn = 100;
  uint32_t next_key = 1000;
};

class EmulatedQp : public QueuePair {
 public:
  EmulatedQp(EmulatedFabric* f, EmulatedDevice* dev, uint32_t qpn, uint32_t max_recv) : f_(f), dev_(dev), qpn_(qpn), max_recv_(max_recv) {}
  ~EmulatedQp() override {
    std::lock_guard<std::mutex> lock(f_->mu);
    f_->qps.erase(qpn_);
  }
  Endpoint local() const override {
    Endpoint e;
    e.qpn = qpn_;
    e.psn = qpn_ * 7;
    return e;
  }
  Status connect(const Endpoint& peer) override {
    peer_ = peer.qpn;
    return Status::kOk;
  }
  Status post_recv(uint64_t wr_id, const Region& mr, size_t offset, size_t len) override {
    std::lock_guard<std::mutex> lock(f_->mu);
    if (error_) {
      dev_->complete(Completion{wr_id, WcStatus::kFlushed, WcOpcode::kRecv, 0, 0});
      return Status::kOk;
    }
    if (recvs_.size() >= max_recv_) return Status::kLimitExceeded;
    recvs_.push_back(Recv{wr_id, mr.addr + offset, len});
    return Status::kOk;
  }
  Status post_send(uint64_t wr_id, const Region& mr, size_t offset, size_t len) override {
    return deliver(wr_id, mr.addr + offset, len, nullptr, 0, 0, false);
  }
  Status post_write_imm(uint64_t wr_id, const Region& mr, size_t offset, size_t len, uint64_t remote_addr, uint32_t rkey,
                        uint32_t imm) override {
    return deliver(wr_id, mr.addr + offset, len, reinterpret_cast<uint8_t*>(remote_addr), rkey, imm, true);
  }

  // The error state: outstanding receives flush, new requests fail.
  void fail_locked() {
    if (error_) return;
    error_ = true;
    for (auto& r : recvs_) dev_->complete(Completion{r.wr_id, WcStatus::kFlushed, WcOpcode::kRecv, 0, 0});
    recvs_.clear();
  }

 private:
  struct Recv {
    uint64_t wr_id;
    uint8_t* addr;
    size_t len;
  };

  Status deliver(uint64_t wr_id, const uint8_t* src, size_t len, uint8_t* raddr, uint32_t rkey, uint32_t imm, bool write) {
    std::lock_guard<std::mutex> lock(f_->mu);
    const WcOpcode op = write ? WcOpcode::kWrite : WcOpcode::kSend;
    auto bad = [&](WcStatus s) {
      dev_->complete(Completion{wr_id, s, op, 0, 0});
      fail_locked();
      return Status::kOk;  // reported as a completion, as hardware does
    };
    if (error_) return bad(WcStatus::kFlushed);
    auto it = f_->qps.find(peer_);
    if (it == f_->qps.end() || it->second->error_) return bad(WcStatus::kRetryExceeded);
    EmulatedQp* peer = it->second;
    if (peer->recvs_.empty()) return bad(WcStatus::kRetryExceeded);  // receiver not ready, retries used up
    Recv r = peer->recvs_.front();
    if (write) {
      auto mr = f_->rkeys.find(rkey);
      if (mr == f_->rkeys.end() || !mr->second.remote_write || raddr < mr->second.addr || raddr + len > mr->second.addr + mr->second.len) {
        peer->fail_locked();
        return bad(WcStatus::kRemoteAccess);
      }
      std::memcpy(raddr, src, len);
      peer->recvs_.pop_front();
      peer->dev_->complete(Completion{r.wr_id, WcStatus::kSuccess, WcOpcode::kRecvImm, static_cast<uint32_t>(len), imm});
    } else {
      if (len > r.len) {
        peer->fail_locked();
        return bad(WcStatus::kRemoteAccess);
      }
      std::memcpy(r.addr, src, len);
      peer->recvs_.pop_front();
      peer->dev_->complete(Completion{r.wr_id, WcStatus::kSuccess, WcOpcode::kRecv, static_cast<uint32_t>(len), 0});
    }
    dev_->complete(Completion{wr_id, WcStatus::kSuccess, op, static_cast<uint32_t>(len), 0});
    return Status::kOk;
  }

  EmulatedFabric* f_;
  EmulatedDevice* dev_;
  uint32_t qpn_;
  uint32_t max_recv_;
  uint32_t peer_ = 0;
  bool error_ = false;
  std::deque<Recv> recvs_;
};

inline Status EmulatedDevice::register_memory(void* addr, size_t len, Access access, Region* out) {
  std::lock_guard<std::mutex> lock(fabric_->mu);
  const uint32_t key = fabric_->next_key++;
  fabric_->rkeys[key] = EmulatedFabric::Mr{static_cast<uint8_t*>(addr), len, access == Access::kRemoteWrite};
  *out = Region{static_cast<uint8_t*>(addr), len, key, key};
  regions_++;
  return Status::kOk;
}

inline void EmulatedDevice::deregister(const Region& r) {
  std::lock_guard<std::mutex> lock(fabric_->mu);
  fabric_->rkeys.erase(r.rkey);
  regions_--;
}

inline std::unique_ptr<QueuePair> EmulatedDevice::create_qp(uint32_t, uint32_t max_recv, Status* st) {
  std::lock_guard<std::mutex> lock(fabric_->mu);
  auto qp = std::make_unique<EmulatedQp>(fabric_, this, fabric_->next_qpn++, max_recv);
  fabric_->qps[qp->local().qpn] = qp.get();
  *st = Status::kOk;
  return qp;
}

inline void EmulatedFabric::fail_qp(uint32_t qpn) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = qps.find(qpn);
  if (it != qps.end()) it->second->fail_locked();
}

}  // namespace dwcp::test
