// Kernel NBD attach: connect to an NBD server on a unix socket, do the fixed-newstyle handshake ourselves
// (simple replies only: the kernel client cannot parse structured replies), then hand the connected sockets
// to drivers/block/nbd.c with the generic-netlink "nbd" family (NBD_CMD_CONNECT / NBD_CMD_DISCONNECT).
//
// Everything that may block (connect, handshake, netlink round trips) runs on the libuv thread pool: the NBD
// server usually lives in the same Node process, so the event loop must stay free to answer the handshake.
#include <arpa/inet.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <endian.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

#include "addon.h"

namespace tsdm {
namespace {

constexpr uint64_t kNbdMagic = 0x4e42444d41474943ULL;   // "NBDMAGIC"
constexpr uint64_t kIHaveOpt = 0x49484156454F5054ULL;   // "IHAVEOPT"
constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ULL;
constexpr uint32_t kOptExportName = 1, kOptGo = 7;
constexpr uint32_t kRepAck = 1, kRepInfo = 3, kRepErrUnsup = 0x80000001;
constexpr uint16_t kFlagFixedNewstyle = 1, kFlagNoZeroes = 2;
constexpr uint16_t kInfoExport = 0;
constexpr uint16_t kTFlagCanMultiConn = 1 << 8;

// A failure with an errno and a human message (the message becomes the JS error's text).
struct Failure {
  int err = 0;
  std::string what;
};

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) close(fd_);
      fd_ = o.release();
    }
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

bool ReadFull(int fd, void* buf, size_t len, Failure* f, const char* what) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *f = {n == 0 ? ECONNRESET : errno, std::string("NBD handshake: reading ") + what + ": " +
                                             (n == 0 ? "server closed the connection" : strerror(errno))};
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteFull(int fd, const void* buf, size_t len, Failure* f) {
  auto* p = static_cast<const uint8_t*>(buf);
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *f = {errno, std::string("NBD handshake: write: ") + strerror(errno)};
      return false;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

void Put16(std::vector<uint8_t>& b, uint16_t v) {
  v = htobe16(v);
  b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 2);
}
void Put32(std::vector<uint8_t>& b, uint32_t v) {
  v = htobe32(v);
  b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 4);
}
void Put64(std::vector<uint8_t>& b, uint64_t v) {
  v = htobe64(v);
  b.insert(b.end(), reinterpret_cast<uint8_t*>(&v), reinterpret_cast<uint8_t*>(&v) + 8);
}
uint16_t Get16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return be16toh(v); }
uint32_t Get32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
uint64_t Get64(const uint8_t* p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }

struct Export {
  uint64_t size = 0;
  uint16_t flags = 0;
};

// Connect to `path` and negotiate `name` up to the transmission phase with simple replies.
bool Handshake(const std::string& path, const std::string& name, Fd* out, Export* ex, Failure* f) {
  Fd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) { *f = {errno, std::string("socket: ") + strerror(errno)}; return false; }
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) { *f = {ENAMETOOLONG, "NBD socket path too long: " + path}; return false; }
  memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  if (connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
    *f = {errno, "connect " + path + ": " + strerror(errno)};
    return false;
  }
  // A server that stalls the handshake must not pin a thread-pool thread forever.
  timeval tv{10, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  uint8_t hello[18];
  if (!ReadFull(s.get(), hello, sizeof hello, f, "greeting")) return false;
  if (Get64(hello) != kNbdMagic || Get64(hello + 8) != kIHaveOpt) {
    *f = {EPROTO, "NBD handshake: not a fixed-newstyle NBD server"};
    return false;
  }
  uint16_t hflags = Get16(hello + 16);
  if (!(hflags & kFlagFixedNewstyle)) { *f = {EPROTO, "NBD handshake: server is not fixed-newstyle"}; return false; }
  bool noZeroes = hflags & kFlagNoZeroes;
  std::vector<uint8_t> b;
  Put32(b, kFlagFixedNewstyle | (noZeroes ? kFlagNoZeroes : 0));
  // NBD_OPT_GO with no info requests (as nbd-client does): the block size is ours to choose.
  Put64(b, kIHaveOpt);
  Put32(b, kOptGo);
  Put32(b, static_cast<uint32_t>(4 + name.size() + 2));
  Put32(b, static_cast<uint32_t>(name.size()));
  b.insert(b.end(), name.begin(), name.end());
  Put16(b, 0);
  if (!WriteFull(s.get(), b.data(), b.size(), f)) return false;

  bool haveExport = false;
  for (;;) {
    uint8_t h[20];
    if (!ReadFull(s.get(), h, sizeof h, f, "option reply")) return false;
    if (Get64(h) != kOptReplyMagic || Get32(h + 8) != kOptGo) { *f = {EPROTO, "NBD handshake: bad option reply"}; return false; }
    uint32_t type = Get32(h + 12), len = Get32(h + 16);
    if (len > 65536) { *f = {EPROTO, "NBD handshake: option reply too long"}; return false; }
    std::vector<uint8_t> data(len);
    if (len && !ReadFull(s.get(), data.data(), len, f, "option reply data")) return false;
    if (type == kRepInfo) {
      if (len >= 12 && Get16(data.data()) == kInfoExport) {
        ex->size = Get64(data.data() + 2);
        ex->flags = Get16(data.data() + 10);
        haveExport = true;
      }
      continue;
    }
    if (type == kRepAck) {
      if (!haveExport) { *f = {EPROTO, "NBD handshake: server sent no NBD_INFO_EXPORT"}; return false; }
      break;
    }
    if (type == kRepErrUnsup) {
      // Old server: NBD_OPT_EXPORT_NAME ends the haggling with size + flags (+ 124 zero bytes).
      b.clear();
      Put64(b, kIHaveOpt);
      Put32(b, kOptExportName);
      Put32(b, static_cast<uint32_t>(name.size()));
      b.insert(b.end(), name.begin(), name.end());
      if (!WriteFull(s.get(), b.data(), b.size(), f)) return false;
      uint8_t r[10 + 124];
      if (!ReadFull(s.get(), r, noZeroes ? 10 : sizeof r, f, "export info")) return false;
      ex->size = Get64(r);
      ex->flags = Get16(r + 8);
      break;
    }
    if (type & 0x80000000u) {
      std::string msg(data.begin(), data.end());
      *f = {type == 0x80000006u ? ENOENT : EINVAL,
            "NBD server refused export \"" + name + "\"" + (msg.empty() ? "" : ": " + msg)};
      return false;
    }
    // Unknown non-error replies are informational: skip them.
  }
  timeval zero{0, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero);
  setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
  *out = std::move(s);
  return true;
}

// ---- generic netlink, hand-rolled (no libnl dependency) ----

class NlMsg {
 public:
  NlMsg(uint16_t family, uint8_t cmd, uint8_t version, uint16_t flags) {
    buf_.resize(NLMSG_HDRLEN + GENL_HDRLEN);
    auto* nh = reinterpret_cast<nlmsghdr*>(buf_.data());
    nh->nlmsg_type = family;
    nh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    auto* gh = reinterpret_cast<genlmsghdr*>(buf_.data() + NLMSG_HDRLEN);
    gh->cmd = cmd;
    gh->version = version;
  }
  void Attr(uint16_t type, const void* data, size_t len) {
    size_t off = buf_.size();
    buf_.resize(off + NLA_ALIGN(NLA_HDRLEN + len));
    auto* a = reinterpret_cast<nlattr*>(buf_.data() + off);
    a->nla_type = type;
    a->nla_len = static_cast<uint16_t>(NLA_HDRLEN + len);
    memcpy(buf_.data() + off + NLA_HDRLEN, data, len);
  }
  void U32(uint16_t type, uint32_t v) { Attr(type, &v, 4); }
  void U64(uint16_t type, uint64_t v) { Attr(type, &v, 8); }
  void Str(uint16_t type, const std::string& s) { Attr(type, s.c_str(), s.size() + 1); }
  size_t Begin(uint16_t type) {
    size_t off = buf_.size();
    buf_.resize(off + NLA_HDRLEN);
    reinterpret_cast<nlattr*>(buf_.data() + off)->nla_type = NLA_F_NESTED | type;
    return off;
  }
  void End(size_t off) { reinterpret_cast<nlattr*>(buf_.data() + off)->nla_len = static_cast<uint16_t>(buf_.size() - off); }
  std::vector<uint8_t>& Finish() {
    reinterpret_cast<nlmsghdr*>(buf_.data())->nlmsg_len = static_cast<uint32_t>(buf_.size());
    return buf_;
  }

 private:
  std::vector<uint8_t> buf_;
};

// Send one request, collect the reply payload (first non-error message) and the final ack.
bool NlTransact(int sock, std::vector<uint8_t>& req, std::vector<uint8_t>* reply, Failure* f, const char* what) {
  if (send(sock, req.data(), req.size(), 0) < 0) { *f = {errno, std::string(what) + ": netlink send: " + strerror(errno)}; return false; }
  std::vector<uint8_t> buf(65536);
  for (;;) {
    ssize_t n = recv(sock, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { *f = {errno, std::string(what) + ": netlink recv: " + strerror(errno)}; return false; }
    for (auto* nh = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
      if (nh->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(nh));
        if (e->error == 0) return true;  // the ack
        *f = {-e->error, std::string(what) + ": " + strerror(-e->error)};
        return false;
      }
      if (nh->nlmsg_type == NLMSG_DONE) return true;
      if (reply && reply->empty()) reply->assign(reinterpret_cast<uint8_t*>(nh), reinterpret_cast<uint8_t*>(nh) + nh->nlmsg_len);
    }
  }
}

// Walk the attributes of a genetlink reply message.
template <typename F>
void ForEachAttr(const uint8_t* p, size_t len, F fn) {
  while (len >= NLA_HDRLEN) {
    auto* a = reinterpret_cast<const nlattr*>(p);
    if (a->nla_len < NLA_HDRLEN || a->nla_len > len) return;
    fn(a->nla_type & NLA_TYPE_MASK, p + NLA_HDRLEN, a->nla_len - NLA_HDRLEN);
    size_t step = NLA_ALIGN(a->nla_len);
    if (step >= len) return;
    p += step;
    len -= step;
  }
}

bool OpenGenl(Fd* out, Failure* f) {
  Fd s(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC));
  if (s.get() < 0) { *f = {errno, std::string("netlink socket: ") + strerror(errno)}; return false; }
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) { *f = {errno, std::string("netlink bind: ") + strerror(errno)}; return false; }
  timeval tv{30, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  *out = std::move(s);
  return true;
}

// The numeric id of the "nbd" genetlink family; ENOENT when the nbd module is not loaded.
bool ResolveNbdFamily(int sock, uint16_t* id, Failure* f) {
  NlMsg m(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, 0);
  m.Str(CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME);
  std::vector<uint8_t> reply;
  if (!NlTransact(sock, m.Finish(), &reply, f, "resolve genetlink family nbd")) return false;
  bool found = false;
  if (reply.size() > NLMSG_HDRLEN + GENL_HDRLEN) {
    ForEachAttr(reply.data() + NLMSG_HDRLEN + GENL_HDRLEN, reply.size() - NLMSG_HDRLEN - GENL_HDRLEN,
                [&](uint16_t type, const uint8_t* data, size_t len) {
                  if (type == CTRL_ATTR_FAMILY_ID && len >= 2) {
                    memcpy(id, data, 2);
                    found = true;
                  }
                });
  }
  if (!found) { *f = {ENOENT, "genetlink family nbd not found"}; return false; }
  return true;
}

struct ConnectParams {
  std::string socketPath, exportName, backend;
  int64_t index = -1;
  uint64_t blockSize = 512;
  uint64_t timeoutSec = 0;
  uint64_t deadConnTimeoutSec = 0;
  bool reconfigure = false;
  uint32_t connections = 1;
  bool readOnly = false;
};

struct ConnectResult {
  uint32_t index = 0;
  Export ex;
  uint32_t connections = 0;
};

bool DoConnect(const ConnectParams& p, ConnectResult* r, Failure* f) {
  std::vector<Fd> socks;
  Fd first;
  if (!Handshake(p.socketPath, p.exportName, &first, &r->ex, f)) return false;
  socks.push_back(std::move(first));
  // More than one socket only when the server promises a coherent cache across connections.
  uint32_t n = (r->ex.flags & kTFlagCanMultiConn) ? p.connections : 1;
  for (uint32_t i = 1; i < n; i++) {
    Fd s;
    Export e2;
    if (!Handshake(p.socketPath, p.exportName, &s, &e2, f)) return false;
    socks.push_back(std::move(s));
  }
  uint64_t flags = r->ex.flags;
  if (p.readOnly) flags |= 2;  // NBD_FLAG_READ_ONLY: the kernel then sets the disk read-only
  Fd nl;
  uint16_t family = 0;
  if (!OpenGenl(&nl, f) || !ResolveNbdFamily(nl.get(), &family, f)) return false;
  // RECONFIGURE hands new sockets to a device whose connections died (the daemon restarted): the kernel
  // swaps them in for the dead ones and the mounted file system carries on.
  NlMsg m(family, p.reconfigure ? NBD_CMD_RECONFIGURE : NBD_CMD_CONNECT, NBD_GENL_VERSION, 0);
  if (p.index >= 0) m.U32(NBD_ATTR_INDEX, static_cast<uint32_t>(p.index));
  if (!p.reconfigure) {
    m.U64(NBD_ATTR_SIZE_BYTES, r->ex.size);
    m.U64(NBD_ATTR_BLOCK_SIZE_BYTES, p.blockSize);
    m.U64(NBD_ATTR_SERVER_FLAGS, flags);
  }
  if (p.timeoutSec) m.U64(NBD_ATTR_TIMEOUT, p.timeoutSec);
  if (p.deadConnTimeoutSec) m.U64(NBD_ATTR_DEAD_CONN_TIMEOUT, p.deadConnTimeoutSec);
  if (!p.backend.empty()) m.Str(NBD_ATTR_BACKEND_IDENTIFIER, p.backend);
  size_t outer = m.Begin(NBD_ATTR_SOCKETS);
  for (auto& s : socks) {
    size_t item = m.Begin(NBD_SOCK_ITEM);
    m.U32(NBD_SOCK_FD, static_cast<uint32_t>(s.get()));
    m.End(item);
  }
  m.End(outer);
  std::vector<uint8_t> reply;
  if (!NlTransact(nl.get(), m.Finish(), &reply, f, p.reconfigure ? "NBD_CMD_RECONFIGURE" : "NBD_CMD_CONNECT")) return false;
  bool haveIndex = false;
  if (reply.size() > NLMSG_HDRLEN + GENL_HDRLEN) {
    ForEachAttr(reply.data() + NLMSG_HDRLEN + GENL_HDRLEN, reply.size() - NLMSG_HDRLEN - GENL_HDRLEN,
                [&](uint16_t type, const uint8_t* data, size_t len) {
                  if (type == NBD_ATTR_INDEX && len >= 4) {
                    memcpy(&r->index, data, 4);
                    haveIndex = true;
                  }
                });
  }
  if (!haveIndex) {
    if (p.index < 0) { *f = {EPROTO, "NBD_CMD_CONNECT: reply carries no device index"}; return false; }
    r->index = static_cast<uint32_t>(p.index);
  }
  // The kernel holds its own references to the sockets now (sockfd_lookup); ours close with `socks`.
  r->connections = static_cast<uint32_t>(socks.size());
  return true;
}

bool DoDisconnect(uint32_t index, Failure* f) {
  Fd nl;
  uint16_t family = 0;
  if (!OpenGenl(&nl, f) || !ResolveNbdFamily(nl.get(), &family, f)) return false;
  NlMsg m(family, NBD_CMD_DISCONNECT, NBD_GENL_VERSION, 0);
  m.U32(NBD_ATTR_INDEX, index);
  return NlTransact(nl.get(), m.Finish(), nullptr, f, "NBD_CMD_DISCONNECT");
}

// ---- JS bindings ----

class ConnectWorker : public Napi::AsyncWorker {
 public:
  ConnectWorker(Napi::Env env, ConnectParams p)
      : Napi::AsyncWorker(env), p_(std::move(p)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { ok_ = DoConnect(p_, &r_, &f_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (!ok_) {
      Napi::Error e = ErrnoError(env, f_.err, "nbd connect");
      e.Set("message", Napi::String::New(env, f_.what));
      deferred_.Reject(e.Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", Napi::Number::New(env, r_.index));
    o.Set("size", Napi::BigInt::New(env, r_.ex.size));
    o.Set("flags", Napi::Number::New(env, r_.ex.flags));
    o.Set("connections", Napi::Number::New(env, r_.connections));
    deferred_.Resolve(o);
  }

 private:
  ConnectParams p_;
  ConnectResult r_;
  Failure f_;
  bool ok_ = false;
  Napi::Promise::Deferred deferred_;
};

class DisconnectWorker : public Napi::AsyncWorker {
 public:
  DisconnectWorker(Napi::Env env, uint32_t index)
      : Napi::AsyncWorker(env), index_(index), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { ok_ = DoDisconnect(index_, &f_); }
  void OnOK() override {
    if (ok_) {
      deferred_.Resolve(Env().Undefined());
      return;
    }
    Napi::Error e = ErrnoError(Env(), f_.err, "nbd disconnect");
    e.Set("message", Napi::String::New(Env(), f_.what));
    deferred_.Reject(e.Value());
  }

 private:
  uint32_t index_;
  Failure f_;
  bool ok_ = false;
  Napi::Promise::Deferred deferred_;
};

std::string StrProp(Napi::Object o, const char* k, bool required) {
  Napi::Value v = o.Get(k);
  if (v.IsString()) return v.As<Napi::String>().Utf8Value();
  if (required || !v.IsUndefined()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a string");
  return "";
}

double NumProp(Napi::Object o, const char* k, double dflt) {
  Napi::Value v = o.Get(k);
  if (v.IsUndefined()) return dflt;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string(k) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// nbdConnect({socketPath, exportName, index?, blockSize?, timeoutSec?, deadConnTimeoutSec?, connections?, readOnly?,
//             backend?, reconfigure?})
Napi::Value NbdConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "nbdConnect(options)");
  Napi::Object o = info[0].As<Napi::Object>();
  ConnectParams p;
  p.socketPath = StrProp(o, "socketPath", true);
  p.exportName = StrProp(o, "exportName", true);
  p.backend = StrProp(o, "backend", false);
  p.index = static_cast<int64_t>(NumProp(o, "index", -1));
  p.blockSize = static_cast<uint64_t>(NumProp(o, "blockSize", 512));
  p.timeoutSec = static_cast<uint64_t>(NumProp(o, "timeoutSec", 0));
  p.deadConnTimeoutSec = static_cast<uint64_t>(NumProp(o, "deadConnTimeoutSec", 0));
  Napi::Value rc = o.Get("reconfigure");
  p.reconfigure = rc.IsBoolean() && rc.As<Napi::Boolean>().Value();
  if (p.reconfigure && p.index < 0) throw Napi::TypeError::New(env, "reconfigure needs the device index");
  p.connections = static_cast<uint32_t>(NumProp(o, "connections", 1));
  if (p.connections < 1 || p.connections > 16) throw Napi::RangeError::New(env, "connections must be 1..16");
  if (p.blockSize < 512 || p.blockSize > 65536 || (p.blockSize & (p.blockSize - 1)))
    throw Napi::RangeError::New(env, "blockSize must be a power of two in 512..65536");
  Napi::Value ro = o.Get("readOnly");
  p.readOnly = ro.IsBoolean() && ro.As<Napi::Boolean>().Value();
  auto* w = new ConnectWorker(env, std::move(p));
  Napi::Promise pr = w->Promise();
  w->Queue();
  return pr;
}

Napi::Value NbdDisconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "nbdDisconnect(index)");
  auto* w = new DisconnectWorker(env, info[0].As<Napi::Number>().Uint32Value());
  Napi::Promise pr = w->Promise();
  w->Queue();
  return pr;
}

// nbdAvailable() -> {genl, reason}: can NBD_CMD_CONNECT work here? (sync: one netlink round trip)
Napi::Value NbdAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Failure f;
  Fd nl;
  uint16_t family = 0;
  bool ok = OpenGenl(&nl, &f) && ResolveNbdFamily(nl.get(), &family, &f);
  Napi::Object o = Napi::Object::New(env);
  o.Set("genl", Napi::Boolean::New(env, ok));
  o.Set("reason", Napi::String::New(env, ok ? "" : f.what));
  return o;
}

}  // namespace

void InitNbdAttach(Napi::Env env, Napi::Object exports) {
  exports.Set("nbdConnect", Napi::Function::New(env, NbdConnect));
  exports.Set("nbdDisconnect", Napi::Function::New(env, NbdDisconnect));
  exports.Set("nbdAvailable", Napi::Function::New(env, NbdAvailable));
}

}  // namespace tsdm
