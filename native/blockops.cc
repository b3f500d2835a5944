// blockops: the block-device and file syscalls Node lacks, for tsdm's I/O layer.
//
// Synchronous calls are cheap metadata queries; anything that may sleep on I/O (discard, zeroing, punching)
// runs on the libuv thread pool and returns a Promise. Errors are thrown/rejected Node-style:
// an Error with .code ("ENOTTY"), .errno (25) and .syscall.
#include <napi.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "addon.h"

namespace tsdm {

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall) {
  const char* name = strerrorname_np(err);
  Napi::Error e = Napi::Error::New(env, std::string(name ? name : "EIO") + ": " + strerror(err) + ", " + syscall);
  e.Set("code", Napi::String::New(env, name ? name : "EIO"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

}  // namespace tsdm

namespace {

using tsdm::ErrnoError;

int ArgFd(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

// Offsets and lengths: a non-negative safe integer number, or a bigint that fits in uint64.
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* what) {
  Napi::Env env = info.Env();
  if (info.Length() <= i) throw Napi::TypeError::New(env, std::string(what) + " is required");
  if (info[i].IsBigInt()) {
    bool lossless = false;
    uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(env, std::string(what) + " does not fit in 64 bits");
    return v;
  }
  if (info[i].IsNumber()) {
    double d = info[i].As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::RangeError::New(env, std::string(what) + " must be a non-negative safe integer");
    return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(env, std::string(what) + " must be a number or bigint");
}

Napi::Value BlkGetSize64(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) < 0) throw ErrnoError(info.Env(), errno, "ioctl(BLKGETSIZE64)");
  return Napi::BigInt::New(info.Env(), size);
}

Napi::Value BlkLogicalBlockSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  int size = 0;
  if (ioctl(fd, BLKSSZGET, &size) < 0) throw ErrnoError(info.Env(), errno, "ioctl(BLKSSZGET)");
  return Napi::Number::New(info.Env(), size);
}

Napi::Value BlkPhysicalBlockSize(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  unsigned int size = 0;
  if (ioctl(fd, BLKPBSZGET, &size) < 0) throw ErrnoError(info.Env(), errno, "ioctl(BLKPBSZGET)");
  return Napi::Number::New(info.Env(), size);
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    throw ErrnoError(info.Env(), errno, "getsockopt(SO_PEERCRED)");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), cred.pid));
  o.Set("uid", Napi::Number::New(info.Env(), cred.uid));
  o.Set("gid", Napi::Number::New(info.Env(), cred.gid));
  return o;
}

// lseek(SEEK_DATA / SEEK_HOLE): where the next data or hole of a file starts at or after `offset`, for
// NBD block status. -1 when there is none (ENXIO: only a hole up to the end). Cheap metadata lookups, so sync.
template <int whence>
Napi::Value SeekDataHole(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t off = ArgU64(info, 1, "offset");
  off_t r = lseek(fd, static_cast<off_t>(off), whence);
  if (r < 0) {
    if (errno == ENXIO) return Napi::Number::New(info.Env(), -1);
    throw ErrnoError(info.Env(), errno, whence == SEEK_DATA ? "lseek(SEEK_DATA)" : "lseek(SEEK_HOLE)");
  }
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

// tryFlock(fd, exclusive): flock(LOCK_SH or LOCK_EX | LOCK_NB). True when taken, false when another open file
// holds a conflicting lock; anything else throws. Never blocks: the lock is a guard, not a queue.
Napi::Value TryFlock(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsBoolean()) throw Napi::TypeError::New(info.Env(), "exclusive must be a boolean");
  int op = (info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH) | LOCK_NB;
  int r;
  do r = flock(fd, op); while (r < 0 && errno == EINTR);
  if (r == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(info.Env(), false);
  throw ErrnoError(info.Env(), errno, "flock");
}

// setSendBuffer(fd, bytes): the socket's send buffer, past net.core.wmem_max where the process may
// (SO_SNDBUFFORCE, CAP_NET_ADMIN), else up to it. Returns what the kernel granted (it reports double the
// request, its bookkeeping included).
Napi::Value SetSendBuffer(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t want = ArgU64(info, 1, "bytes");
  int v = want > 0x3fffffff ? 0x3fffffff : static_cast<int>(want);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &v, sizeof v) < 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v) < 0)
    throw ErrnoError(info.Env(), errno, "setsockopt(SO_SNDBUF)");
  int got = 0;
  socklen_t len = sizeof got;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &len) < 0) throw ErrnoError(info.Env(), errno, "getsockopt(SO_SNDBUF)");
  return Napi::Number::New(info.Env(), got);
}

// preadNoWait(fd, buf, offset) / pwriteNoWait(fd, buf, offset): one preadv2/pwritev2 with RWF_NOWAIT, on
// the calling (event loop) thread. Data in the page cache is copied at once, which saves the round trip
// through the thread pool (most of a 4 KiB request's latency); where the kernel would have to wait (a page
// not cached, a lock held, dirty throttling) it returns at once instead. Returns bytes done (possibly
// short), kNoWaitAgain when nothing could be done without waiting, kNoWaitUnsupported when this file
// does not take RWF_NOWAIT (buffered writes on some file systems).
constexpr int kNoWaitAgain = -1;
constexpr int kNoWaitUnsupported = -2;

template <bool write>
Napi::Value IoNoWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0);
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "buffer must be a Buffer");
  auto buf = info[1].As<Napi::Buffer<uint8_t>>();
  uint64_t off = ArgU64(info, 2, "offset");
  struct iovec iov = {buf.Data(), buf.Length()};
  ssize_t n = write ? pwritev2(fd, &iov, 1, static_cast<off_t>(off), RWF_NOWAIT) : preadv2(fd, &iov, 1, static_cast<off_t>(off), RWF_NOWAIT);
  if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
  if (errno == EAGAIN) return Napi::Number::New(env, kNoWaitAgain);
  if (errno == EOPNOTSUPP || errno == EINVAL) return Napi::Number::New(env, kNoWaitUnsupported);
  throw ErrnoError(env, errno, write ? "pwritev2" : "preadv2");
}

enum class RangeOp { PunchHole, ZeroRange, BlkDiscard, BlkZeroOut };

const char* RangeOpName(RangeOp op) {
  switch (op) {
    case RangeOp::PunchHole: return "fallocate(PUNCH_HOLE)";
    case RangeOp::ZeroRange: return "fallocate(ZERO_RANGE)";
    case RangeOp::BlkDiscard: return "ioctl(BLKDISCARD)";
    case RangeOp::BlkZeroOut: return "ioctl(BLKZEROOUT)";
  }
  return "?";
}

int DoRangeOp(RangeOp op, int fd, uint64_t off, uint64_t len) {
  uint64_t range[2] = {off, len};
  switch (op) {
    case RangeOp::PunchHole:
      return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len));
    case RangeOp::ZeroRange:
      return fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), static_cast<off_t>(len));
    case RangeOp::BlkDiscard: return ioctl(fd, BLKDISCARD, range);
    case RangeOp::BlkZeroOut: return ioctl(fd, BLKZEROOUT, range);
  }
  errno = EINVAL;
  return -1;
}

class RangeWorker : public Napi::AsyncWorker {
 public:
  RangeWorker(Napi::Env env, RangeOp op, int fd, uint64_t off, uint64_t len)
      : Napi::AsyncWorker(env), op_(op), fd_(fd), off_(off), len_(len), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    if (DoRangeOp(op_, fd_, off_, len_) < 0) err_ = errno;
  }
  void OnOK() override {
    if (err_ != 0) deferred_.Reject(ErrnoError(Env(), err_, RangeOpName(op_)).Value());
    else deferred_.Resolve(Env().Undefined());
  }

 private:
  RangeOp op_;
  int fd_;
  uint64_t off_, len_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

template <RangeOp op>
Napi::Value RangeAsync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = ArgU64(info, 2, "length");
  auto* w = new RangeWorker(info.Env(), op, fd, off, len);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

template <RangeOp op>
Napi::Value RangeSync(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0);
  uint64_t off = ArgU64(info, 1, "offset");
  uint64_t len = ArgU64(info, 2, "length");
  if (DoRangeOp(op, fd, off, len) < 0) throw ErrnoError(info.Env(), errno, RangeOpName(op));
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("blkGetSize64", Napi::Function::New(env, BlkGetSize64));
  exports.Set("blkLogicalBlockSize", Napi::Function::New(env, BlkLogicalBlockSize));
  exports.Set("blkPhysicalBlockSize", Napi::Function::New(env, BlkPhysicalBlockSize));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
  exports.Set("setSendBuffer", Napi::Function::New(env, SetSendBuffer));
  exports.Set("seekData", Napi::Function::New(env, SeekDataHole<SEEK_DATA>));
  exports.Set("seekHole", Napi::Function::New(env, SeekDataHole<SEEK_HOLE>));
  exports.Set("tryFlock", Napi::Function::New(env, TryFlock));
  exports.Set("punchHole", Napi::Function::New(env, RangeAsync<RangeOp::PunchHole>));
  exports.Set("zeroRange", Napi::Function::New(env, RangeAsync<RangeOp::ZeroRange>));
  exports.Set("blkDiscard", Napi::Function::New(env, RangeAsync<RangeOp::BlkDiscard>));
  exports.Set("blkZeroOut", Napi::Function::New(env, RangeAsync<RangeOp::BlkZeroOut>));
  exports.Set("preadNoWait", Napi::Function::New(env, IoNoWait<false>));
  exports.Set("pwriteNoWait", Napi::Function::New(env, IoNoWait<true>));
  exports.Set("punchHoleSync", Napi::Function::New(env, RangeSync<RangeOp::PunchHole>));
  tsdm::InitDevNode(env, exports);
  tsdm::InitNbdAttach(env, exports);
  tsdm::InitUblk(env, exports);
  tsdm::InitProcess(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(blockops, Init)
