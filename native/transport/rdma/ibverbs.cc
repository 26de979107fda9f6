// The verbs interface over the real libibverbs, opened with dlopen at run
// time: one build serves hosts with and without rdma-core. Built against the
// verbs headers when present (Debian's libibverbs-dev); without them
// open_ibverbs() reports that this build has no RDMA support.
//
// Only the exported entry points are looked up; ibv_post_send, ibv_post_recv,
// ibv_poll_cq and ibv_req_notify_cq are inline in the headers and call
// through the device context's function table. This code has not run
// against an RDMA device (none on the machines it was written on): device
// listing is tested with no device present, the rest compiles and follows
// the verbs documentation.
#include "transport/rdma/verbs.h"

#if __has_include(<infiniband/verbs.h>)
#include <arpa/inet.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <infiniband/verbs.h>

#include <algorithm>
#include <cstring>
#include <random>

namespace dwcp::transport::rdma {
namespace {

struct Api {
  void* lib = nullptr;
  decltype(&::ibv_get_device_list) get_device_list = nullptr;
  decltype(&::ibv_free_device_list) free_device_list = nullptr;
  decltype(&::ibv_get_device_name) get_device_name = nullptr;
  decltype(&::ibv_open_device) open_device = nullptr;
  decltype(&::ibv_close_device) close_device = nullptr;
  decltype(&::ibv_query_device) query_device = nullptr;
  int (*query_port)(ibv_context*, uint8_t, ibv_port_attr*) = nullptr;
  decltype(&::ibv_query_gid) query_gid = nullptr;
  decltype(&::ibv_alloc_pd) alloc_pd = nullptr;
  decltype(&::ibv_dealloc_pd) dealloc_pd = nullptr;
  ibv_mr* (*reg_mr)(ibv_pd*, void*, size_t, int) = nullptr;
  decltype(&::ibv_dereg_mr) dereg_mr = nullptr;
  decltype(&::ibv_create_comp_channel) create_comp_channel = nullptr;
  decltype(&::ibv_destroy_comp_channel) destroy_comp_channel = nullptr;
  decltype(&::ibv_create_cq) create_cq = nullptr;
  decltype(&::ibv_destroy_cq) destroy_cq = nullptr;
  decltype(&::ibv_get_cq_event) get_cq_event = nullptr;
  decltype(&::ibv_ack_cq_events) ack_cq_events = nullptr;
  decltype(&::ibv_create_qp) create_qp = nullptr;
  decltype(&::ibv_destroy_qp) destroy_qp = nullptr;
  decltype(&::ibv_modify_qp) modify_qp = nullptr;
  // Optional (rdma-core 32 and later): GID types, to pick a RoCE v2 GID.
  decltype(&::_ibv_query_gid_ex) query_gid_ex = nullptr;

  ~Api() {
    if (lib) dlclose(lib);
  }
  bool load(std::string* error) {
    lib = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      *error = e ? e : "libibverbs.so.1 not found";
      return false;
    }
    bool ok = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) {
        ok = false;
        *error = std::string("libibverbs lacks ") + name;
      }
    };
    sym(get_device_list, "ibv_get_device_list");
    sym(free_device_list, "ibv_free_device_list");
    sym(get_device_name, "ibv_get_device_name");
    sym(open_device, "ibv_open_device");
    sym(close_device, "ibv_close_device");
    sym(query_device, "ibv_query_device");
    sym(query_port, "ibv_query_port");
    sym(query_gid, "ibv_query_gid");
    sym(alloc_pd, "ibv_alloc_pd");
    sym(dealloc_pd, "ibv_dealloc_pd");
    sym(reg_mr, "ibv_reg_mr");
    sym(dereg_mr, "ibv_dereg_mr");
    sym(create_comp_channel, "ibv_create_comp_channel");
    sym(destroy_comp_channel, "ibv_destroy_comp_channel");
    sym(create_cq, "ibv_create_cq");
    sym(destroy_cq, "ibv_destroy_cq");
    sym(get_cq_event, "ibv_get_cq_event");
    sym(ack_cq_events, "ibv_ack_cq_events");
    sym(create_qp, "ibv_create_qp");
    sym(destroy_qp, "ibv_destroy_qp");
    sym(modify_qp, "ibv_modify_qp");
    query_gid_ex = reinterpret_cast<decltype(query_gid_ex)>(dlsym(lib, "_ibv_query_gid_ex"));
    return ok;
  }
};

uint32_t mtu_bytes(ibv_mtu m) {
  switch (m) {
    case IBV_MTU_256: return 256;
    case IBV_MTU_512: return 512;
    case IBV_MTU_1024: return 1024;
    case IBV_MTU_2048: return 2048;
    case IBV_MTU_4096: return 4096;
  }
  return 0;
}

ibv_mtu mtu_enum(uint32_t bytes) {
  if (bytes >= 4096) return IBV_MTU_4096;
  if (bytes >= 2048) return IBV_MTU_2048;
  if (bytes >= 1024) return IBV_MTU_1024;
  if (bytes >= 512) return IBV_MTU_512;
  return IBV_MTU_256;
}

WcStatus wc_status(ibv_wc_status s) {
  switch (s) {
    case IBV_WC_SUCCESS: return WcStatus::kSuccess;
    case IBV_WC_WR_FLUSH_ERR: return WcStatus::kFlushed;
    case IBV_WC_REM_ACCESS_ERR: return WcStatus::kRemoteAccess;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR: return WcStatus::kRetryExceeded;
    default: return WcStatus::kLocalError;
  }
}

constexpr uint8_t kPort = 1;

class IbQp : public QueuePair {
 public:
  IbQp(const Api* api, ibv_qp* qp, ibv_context* ctx, int gid_index) : api_(api), qp_(qp), gid_index_(gid_index) {
    ibv_port_attr pa{};
    api_->query_port(ctx, kPort, &pa);
    local_.qpn = qp->qp_num;
    local_.lid = pa.lid;
    local_.mtu = mtu_bytes(pa.active_mtu);
    ibv_gid gid{};
    if (api_->query_gid(ctx, kPort, gid_index, &gid) == 0) std::memcpy(local_.gid, gid.raw, 16);
    local_.psn = std::random_device{}() & 0xffffff;
  }
  ~IbQp() override { api_->destroy_qp(qp_); }
  Endpoint local() const override { return local_; }

  Status connect(const Endpoint& peer) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = kPort;
    a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
    if (api_->modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) return Status::kConnectionLost;
    a = ibv_qp_attr{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = mtu_enum(std::min(peer.mtu, local_.mtu));
    a.dest_qp_num = peer.qpn;
    a.rq_psn = peer.psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = peer.lid;
    a.ah_attr.port_num = kPort;
    // RoCE (and routed InfiniBand) address by GID.
    bool gid = false;
    for (uint8_t b : peer.gid) gid |= b != 0;
    if (gid) {
      a.ah_attr.is_global = 1;
      std::memcpy(a.ah_attr.grh.dgid.raw, peer.gid, 16);
      a.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
      a.ah_attr.grh.hop_limit = 64;
    }
    if (api_->modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                     IBV_QP_MIN_RNR_TIMER)) {
      return Status::kConnectionLost;
    }
    a = ibv_qp_attr{};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = 14;   // 4.096 us x 2^14: about 67 ms per retry
    a.retry_cnt = 7;
    a.rnr_retry = 7;  // the credits make receiver-not-ready rare; wait it out
    a.sq_psn = local_.psn;
    a.max_rd_atomic = 1;
    if (api_->modify_qp(qp_, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)) {
      return Status::kConnectionLost;
    }
    return Status::kOk;
  }

  Status post_recv(uint64_t wr_id, const Region& mr, size_t offset, size_t len) override {
    ibv_sge sge{reinterpret_cast<uint64_t>(mr.addr + offset), static_cast<uint32_t>(len), mr.lkey};
    ibv_recv_wr w{};
    w.wr_id = wr_id;
    w.sg_list = &sge;
    w.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    return ibv_post_recv(qp_, &w, &bad) == 0 ? Status::kOk : Status::kLimitExceeded;
  }

  Status post_send(uint64_t wr_id, const Region& mr, size_t offset, size_t len) override {
    return post(wr_id, mr, offset, len, IBV_WR_SEND, 0, 0, 0);
  }

  Status post_write_imm(uint64_t wr_id, const Region& mr, size_t offset, size_t len, uint64_t remote_addr, uint32_t rkey,
                        uint32_t imm) override {
    return post(wr_id, mr, offset, len, IBV_WR_RDMA_WRITE_WITH_IMM, imm, remote_addr, rkey);
  }

 private:
  Status post(uint64_t wr_id, const Region& mr, size_t offset, size_t len, ibv_wr_opcode op, uint32_t imm, uint64_t remote_addr,
              uint32_t rkey) {
    ibv_sge sge{reinterpret_cast<uint64_t>(mr.addr + offset), static_cast<uint32_t>(len), mr.lkey};
    ibv_send_wr w{};
    w.wr_id = wr_id;
    w.sg_list = &sge;
    w.num_sge = 1;
    w.opcode = op;
    w.send_flags = IBV_SEND_SIGNALED;
    if (op == IBV_WR_RDMA_WRITE_WITH_IMM) {
      w.imm_data = htonl(imm);
      w.wr.rdma.remote_addr = remote_addr;
      w.wr.rdma.rkey = rkey;
    }
    ibv_send_wr* bad = nullptr;
    return ibv_post_send(qp_, &w, &bad) == 0 ? Status::kOk : Status::kLimitExceeded;
  }

  const Api* api_;
  ibv_qp* qp_;
  int gid_index_;
  Endpoint local_;
};

// The GID index to use on `port` when the caller did not name one: on RoCE
// the first RoCE v2 entry holding an IPv4-mapped address (routable, and
// what rdma_cm picks for IPv4 peers), else the first RoCE v2 entry, else 0;
// on InfiniBand 0.
int pick_gid(const Api* api, ibv_context* ctx, uint8_t port) {
  ibv_port_attr pa{};
  if (api->query_port(ctx, port, &pa) != 0 || pa.link_layer != IBV_LINK_LAYER_ETHERNET || !api->query_gid_ex) return 0;
  int first_v2 = -1;
  for (int i = 0; i < pa.gid_tbl_len; i++) {
    ibv_gid_entry e{};
    if (api->query_gid_ex(ctx, port, static_cast<uint32_t>(i), &e, 0, sizeof(e)) != 0 || e.gid_type != IBV_GID_TYPE_ROCE_V2) continue;
    const uint8_t* g = e.gid.raw;
    bool v4 = g[10] == 0xff && g[11] == 0xff;
    for (int k = 0; k < 10; k++) v4 = v4 && g[k] == 0;
    if (v4) return i;
    if (first_v2 < 0) first_v2 = i;
  }
  return first_v2 >= 0 ? first_v2 : 0;
}

class IbDevice : public Device {
 public:
  IbDevice(const Api* api, ibv_context* ctx, int gid_index, Status* st) : api_(api), ctx_(ctx) {
    *st = Status::kDeviceError;
    gid_index_ = gid_index >= 0 ? gid_index : pick_gid(api_, ctx_, kPort);
    pd_ = api_->alloc_pd(ctx_);
    channel_ = api_->create_comp_channel(ctx_);
    if (!pd_ || !channel_) return;
    fcntl(channel_->fd, F_SETFL, fcntl(channel_->fd, F_GETFL) | O_NONBLOCK);
    // One completion queue for every QP of the device: as deep as the
    // adapter allows, up to 256 Ki entries; the engine keeps the requests
    // its lanes may have outstanding within it (cq_capacity).
    ibv_device_attr da{};
    const int max_cqe = api_->query_device(ctx_, &da) == 0 && da.max_cqe > 0 ? da.max_cqe : 4096;
    capacity_ = static_cast<size_t>(std::min(max_cqe, 256 * 1024));
    cq_ = api_->create_cq(ctx_, static_cast<int>(capacity_), nullptr, channel_, 0);
    if (!cq_ || ibv_req_notify_cq(cq_, 0) != 0) return;
    capacity_ = static_cast<size_t>(cq_->cqe);
    *st = Status::kOk;
  }
  ~IbDevice() override {
    if (cq_) api_->destroy_cq(cq_);
    if (channel_) api_->destroy_comp_channel(channel_);
    if (pd_) api_->dealloc_pd(pd_);
    api_->close_device(ctx_);
  }
  Status register_memory(void* addr, size_t len, Access access, Region* out) override {
    const int flags = IBV_ACCESS_LOCAL_WRITE | (access == Access::kRemoteWrite ? IBV_ACCESS_REMOTE_WRITE : 0);
    ibv_mr* mr = api_->reg_mr(pd_, addr, len, flags);
    if (!mr) return Status::kDeviceError;
    *out = Region{static_cast<uint8_t*>(addr), len, mr->lkey, mr->rkey};
    mrs_.push_back(mr);
    return Status::kOk;
  }
  void deregister(const Region& r) override {
    for (auto it = mrs_.begin(); it != mrs_.end(); ++it) {
      if ((*it)->lkey == r.lkey) {
        api_->dereg_mr(*it);
        mrs_.erase(it);
        return;
      }
    }
  }
  std::unique_ptr<QueuePair> create_qp(uint32_t max_send, uint32_t max_recv, Status* st) override {
    ibv_qp_init_attr a{};
    a.send_cq = cq_;
    a.recv_cq = cq_;
    a.qp_type = IBV_QPT_RC;
    a.cap.max_send_wr = max_send;
    a.cap.max_recv_wr = max_recv;
    a.cap.max_send_sge = 1;
    a.cap.max_recv_sge = 1;
    ibv_qp* qp = api_->create_qp(pd_, &a);
    *st = qp ? Status::kOk : Status::kDeviceError;
    return qp ? std::make_unique<IbQp>(api_, qp, ctx_, gid_index_) : nullptr;
  }
  size_t poll(Completion* out, size_t n) override {
    // Take the notification, re-arm, then drain: a completion arriving in
    // between is in the queue or raises a new event.
    ibv_cq* ev_cq = nullptr;
    void* ev_ctx = nullptr;
    while (api_->get_cq_event(channel_, &ev_cq, &ev_ctx) == 0) {
      api_->ack_cq_events(ev_cq, 1);
      ibv_req_notify_cq(cq_, 0);
    }
    ibv_wc wc[32];
    size_t k = 0;
    while (k < n) {
      const int got = ibv_poll_cq(cq_, static_cast<int>(std::min<size_t>(32, n - k)), wc);
      if (got <= 0) break;
      for (int i = 0; i < got; i++) {
        Completion& c = out[k++];
        c.wr_id = wc[i].wr_id;
        c.status = wc_status(wc[i].status);
        c.byte_len = wc[i].byte_len;
        c.imm = (wc[i].wc_flags & IBV_WC_WITH_IMM) ? ntohl(wc[i].imm_data) : 0;
        switch (wc[i].opcode) {
          case IBV_WC_RDMA_WRITE: c.opcode = WcOpcode::kWrite; break;
          case IBV_WC_RECV: c.opcode = WcOpcode::kRecv; break;
          case IBV_WC_RECV_RDMA_WITH_IMM: c.opcode = WcOpcode::kRecvImm; break;
          default: c.opcode = WcOpcode::kSend; break;
        }
      }
    }
    return k;
  }
  int event_fd() const override { return channel_ ? channel_->fd : -1; }
  size_t cq_capacity() const override { return capacity_; }

 private:
  const Api* api_;
  ibv_context* ctx_;
  size_t capacity_ = 0;
  int gid_index_ = 0;
  ibv_pd* pd_ = nullptr;
  ibv_comp_channel* channel_ = nullptr;
  ibv_cq* cq_ = nullptr;
  std::vector<ibv_mr*> mrs_;
};

class IbVerbs : public Verbs {
 public:
  explicit IbVerbs(std::unique_ptr<Api> api) : api_(std::move(api)) {}

  std::vector<DeviceInfo> devices() override {
    std::vector<DeviceInfo> out;
    int n = 0;
    ibv_device** list = api_->get_device_list(&n);
    if (!list) return out;
    for (int i = 0; i < n; i++) {
      DeviceInfo d;
      d.name = api_->get_device_name(list[i]);
      if (ibv_context* ctx = api_->open_device(list[i])) {
        ibv_device_attr da{};
        if (api_->query_device(ctx, &da) == 0) {
          for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
            ibv_port_attr pa{};
            if (api_->query_port(ctx, p, &pa) != 0) continue;
            PortInfo pi;
            pi.number = p;
            pi.state = pa.state == IBV_PORT_ACTIVE ? "active" : pa.state == IBV_PORT_DOWN ? "down" : "not active";
            pi.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand";
            pi.mtu = mtu_bytes(pa.active_mtu);
            ibv_gid gid{};
            pi.gid_index = pick_gid(api_.get(), ctx, p);
            if (api_->query_gid(ctx, p, pi.gid_index, &gid) == 0) {
              char text[INET6_ADDRSTRLEN] = {};
              inet_ntop(AF_INET6, gid.raw, text, sizeof(text));
              pi.gid = text;
            }
            d.ports.push_back(pi);
          }
        }
        api_->close_device(ctx);
      }
      out.push_back(std::move(d));
    }
    api_->free_device_list(list);
    return out;
  }

  std::unique_ptr<Device> open(const std::string& name, int gid_index, Status* st) override {
    *st = Status::kInvalidArgument;
    int n = 0;
    ibv_device** list = api_->get_device_list(&n);
    if (!list) return nullptr;
    std::unique_ptr<Device> dev;
    for (int i = 0; i < n && !dev; i++) {
      if (name != api_->get_device_name(list[i])) continue;
      ibv_context* ctx = api_->open_device(list[i]);
      if (!ctx) {
        *st = Status::kDeviceError;
        break;
      }
      auto d = std::make_unique<IbDevice>(api_.get(), ctx, gid_index, st);
      if (*st == Status::kOk) dev = std::move(d);
    }
    api_->free_device_list(list);
    return dev;
  }

 private:
  std::unique_ptr<Api> api_;
};

}  // namespace

std::unique_ptr<Verbs> open_ibverbs(std::string* error) {
  auto api = std::make_unique<Api>();
  if (!api->load(error)) return nullptr;
  return std::make_unique<IbVerbs>(std::move(api));
}

}  // namespace dwcp::transport::rdma

#else  // no verbs headers at build time

namespace dwcp::transport::rdma {

std::unique_ptr<Verbs> open_ibverbs(std::string* error) {
  *error = "built without RDMA support (no libibverbs-dev headers at build time)";
  return nullptr;
}

}  // namespace dwcp::transport::rdma

#endif
