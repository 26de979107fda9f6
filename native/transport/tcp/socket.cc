#include "transport/tcp/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace dwcp::transport::tcp {

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

bool make_address(const std::string& host, uint16_t port, sockaddr_storage* addr, socklen_t* len) {
  std::memset(addr, 0, sizeof(*addr));
  auto* v4 = reinterpret_cast<sockaddr_in*>(addr);
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(addr);
  if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

int apply_buffers_and_congestion(int fd, const SocketOptions& opts) {
  if (!opts.congestion.empty() &&
      setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, opts.congestion.data(),
                 static_cast<socklen_t>(opts.congestion.size())) != 0) {
    return errno;
  }
  if (opts.send_buffer > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opts.send_buffer, sizeof(int)) != 0) return errno;
  if (opts.recv_buffer > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opts.recv_buffer, sizeof(int)) != 0) return errno;
  return 0;
}

int apply_options(int fd, const SocketOptions& opts) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) return errno;
  if (const int err = apply_buffers_and_congestion(fd, opts); err != 0) return err;
  if (opts.peer_timeout_ms > 0) {
    // Probes start after half the timeout of silence, then every twelfth
    // of it until the timeout has passed (TCP keepalive counts in seconds).
    const int total = static_cast<int>(std::max(2u, (opts.peer_timeout_ms + 999) / 1000));
    const int idle = std::max(1, total / 2);
    const int interval = std::max(1, total / 12);
    const int count = std::max(1, (total - idle) / interval);
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval)) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)) != 0) {
      return errno;
    }
  }
  return 0;
}

Fd tcp_socket(int family, const SocketOptions& opts, int* err) {
  Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    *err = errno;
    return Fd();
  }
  if ((*err = apply_options(fd.get(), opts)) != 0) return Fd();
  return fd;
}

Fd tcp_listen(const std::string& host, uint16_t* port, int backlog, int* err, const SocketOptions& accepted) {
  sockaddr_storage addr;
  socklen_t len;
  if (!make_address(host, *port, &addr, &len)) {
    *err = EINVAL;
    return Fd();
  }
  Fd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    *err = errno;
    return Fd();
  }
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // Accepted sockets inherit these; buffer sizes must be set before the
  // handshake, which fixes the window scale from the receive buffer.
  const int opt_err = apply_buffers_and_congestion(fd.get(), accepted);
  if (opt_err != 0) {
    *err = opt_err;
    return Fd();
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd.get(), backlog) != 0) {
    *err = errno;
    return Fd();
  }
  if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    *port = ntohs(addr.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&addr)->sin_port
                                            : reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
  return fd;
}

std::string congestion_of(int fd) {
  char name[32] = {};
  socklen_t len = sizeof(name);
  if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0) return "";
  return std::string(name, strnlen(name, len));
}

}  // namespace dwcp::transport::tcp
