// ublk attach (drivers/block/ublk_drv.c, Linux >= 6.0): the kernel queues block requests to this process
// over io_uring URING_CMDs; the daemon serves them with its own mapped devices.
//
// Control plane: /dev/ublk-control, one synchronous SQE128 ring per command sequence (ADD_DEV, SET_PARAMS,
// START_DEV, STOP_DEV, DEL_DEV), driven from the libuv thread pool. ublkDeleteOrphan deletes a device that a
// killed daemon left behind (GET_DEV_INFO, STOP_DEV, DEL_DEV_ASYNC).
// Data plane: one hardware queue served by its own thread and ring. Every tag has a fixed buffer; a
// FETCH_REQ completion means "request `tag` is ready"; the request goes to JS through a thread-safe function;
// JS answers with ublkComplete(), which queues the result and wakes the queue thread through an eventfd; the
// thread then sends COMMIT_AND_FETCH_REQ, which completes the request and re-arms the tag.
// Raw io_uring syscalls: no liburing dependency.
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/ublk_cmd.h>
#include <memory>
#include <mutex>
#include <string>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "addon.h"

namespace tsdm {
namespace {

// ioctl-encoded command numbers (accepted by every kernel since 6.4; the 6.1 uapi header lacks them).
#define TSDM_UBLK_CTRL(rw, nr) rw('u', nr, struct ublksrv_ctrl_cmd)
#define TSDM_UBLK_IO(nr) _IOWR('u', nr, struct ublksrv_io_cmd)
constexpr unsigned kCmdAddDev = TSDM_UBLK_CTRL(_IOWR, 0x04);
constexpr unsigned kCmdDelDev = TSDM_UBLK_CTRL(_IOWR, 0x05);
constexpr unsigned kCmdStartDev = TSDM_UBLK_CTRL(_IOWR, 0x06);
constexpr unsigned kCmdStopDev = TSDM_UBLK_CTRL(_IOWR, 0x07);
constexpr unsigned kCmdSetParams = TSDM_UBLK_CTRL(_IOWR, 0x08);
constexpr unsigned kCmdGetDevInfo = TSDM_UBLK_CTRL(_IOR, 0x02);
// Deletes without waiting for the disk to be released (a file system may still be mounted on it): added in 6.9,
// its handling fixed in 6.11 (and stable); kernels without it answer -EOPNOTSUPP.
constexpr unsigned kCmdDelDevAsync = TSDM_UBLK_CTRL(_IOR, 0x14);
constexpr unsigned kIoFetchReq = TSDM_UBLK_IO(0x20);
constexpr unsigned kIoCommitAndFetchReq = TSDM_UBLK_IO(0x21);
constexpr int kIoResAbort = -ENODEV;

constexpr uint64_t kEventTag = 1ULL << 32;  // user_data of the eventfd read

// A minimal io_uring (SQE128 + CQE32, which URING_CMD needs for the 32-byte control payload).
class Ring {
 public:
  ~Ring() {
    if (sq_ != MAP_FAILED) munmap(sq_, sqSize_);
    if (cq_ != MAP_FAILED) munmap(cq_, cqSize_);
    if (sqes_ != MAP_FAILED) munmap(sqes_, sqesSize_);
    if (fd_ >= 0) close(fd_);
  }
  int Init(unsigned entries) {
    io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQE32;
    fd_ = static_cast<int>(syscall(__NR_io_uring_setup, entries, &p));
    if (fd_ < 0) return -errno;
    sqSize_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cqSize_ = p.cq_off.cqes + p.cq_entries * 2 * sizeof(io_uring_cqe);
    sqesSize_ = p.sq_entries * 2 * sizeof(io_uring_sqe);
    sq_ = mmap(nullptr, sqSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
    cq_ = mmap(nullptr, cqSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    sqes_ = mmap(nullptr, sqesSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
    if (sq_ == MAP_FAILED || cq_ == MAP_FAILED || sqes_ == MAP_FAILED) return -errno;
    auto* sq = static_cast<char*>(sq_);
    auto* cq = static_cast<char*>(cq_);
    sqTail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sqHead_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sqMask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sqEntries_ = p.sq_entries;
    sqArray_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cqHead_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cqTail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cqMask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    return 0;
  }
  // A zeroed 128-byte SQE, or nullptr when the SQ is full (flush with Submit first).
  io_uring_sqe* Get() {
    unsigned head = __atomic_load_n(sqHead_, __ATOMIC_ACQUIRE);
    if (localTail_ - head >= sqEntries_) return nullptr;
    unsigned idx = localTail_ & sqMask_;
    auto* sqe = static_cast<io_uring_sqe*>(sqes_) + idx * 2;
    memset(sqe, 0, 2 * sizeof *sqe);
    sqArray_[idx] = idx;
    localTail_++;
    pending_++;
    return sqe;
  }
  // Submit queued SQEs and wait for at least `wait` completions.
  int Submit(unsigned wait) {
    __atomic_store_n(sqTail_, localTail_, __ATOMIC_RELEASE);
    unsigned n = pending_;
    for (;;) {
      long r = syscall(__NR_io_uring_enter, fd_, n, wait, wait ? IORING_ENTER_GETEVENTS : 0, nullptr, 0);
      if (r >= 0) {
        pending_ -= static_cast<unsigned>(r) > pending_ ? pending_ : static_cast<unsigned>(r);
        return 0;
      }
      if (errno != EINTR) return -errno;
      n = 0;  // the kernel consumed what it consumed; just wait again
    }
  }
  // Visit every available CQE (user_data, res, the big CQE's extra 16 bytes are unused here).
  template <typename F>
  void Reap(F fn) {
    unsigned head = *cqHead_;
    unsigned tail = __atomic_load_n(cqTail_, __ATOMIC_ACQUIRE);
    for (; head != tail; head++) {
      io_uring_cqe* c = &cqes_[(head & cqMask_) * 2];
      fn(c->user_data, c->res);
    }
    __atomic_store_n(cqHead_, head, __ATOMIC_RELEASE);
  }

 private:
  int fd_ = -1;
  void* sq_ = MAP_FAILED;
  void* cq_ = MAP_FAILED;
  void* sqes_ = MAP_FAILED;
  size_t sqSize_ = 0, cqSize_ = 0, sqesSize_ = 0;
  unsigned *sqTail_ = nullptr, *sqHead_ = nullptr, *sqArray_ = nullptr, *cqHead_ = nullptr, *cqTail_ = nullptr;
  unsigned sqMask_ = 0, cqMask_ = 0, sqEntries_ = 0;
  unsigned localTail_ = 0, pending_ = 0;
  io_uring_cqe* cqes_ = nullptr;
};

// One control command, synchronously; returns the CQE's res (or -errno of the ring).
int CtrlCmd(int ctrlFd, unsigned op, const ublksrv_ctrl_cmd& cmd) {
  Ring r;
  int e = r.Init(4);
  if (e < 0) return e;
  io_uring_sqe* sqe = r.Get();
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = ctrlFd;
  sqe->off = op;  // sqe->cmd_op shares the union with off (headers older than 6.0 lack the name)
  memcpy(reinterpret_cast<char*>(sqe) + 48, &cmd, sizeof cmd);  // sqe->cmd: bytes 48.. of the 128-byte SQE
  if ((e = r.Submit(1)) < 0) return e;
  int res = -EIO;
  r.Reap([&](uint64_t, int v) { res = v; });
  return res;
}

const char* OpName(unsigned op) {
  switch (op) {
    case kCmdAddDev: return "UBLK_CMD_ADD_DEV";
    case kCmdDelDev: return "UBLK_CMD_DEL_DEV";
    case kCmdStartDev: return "UBLK_CMD_START_DEV";
    case kCmdStopDev: return "UBLK_CMD_STOP_DEV";
    case kCmdSetParams: return "UBLK_CMD_SET_PARAMS";
    case kCmdGetDevInfo: return "UBLK_CMD_GET_DEV_INFO";
    case kCmdDelDevAsync: return "UBLK_CMD_DEL_DEV_ASYNC";
  }
  return "ublk control";
}

struct Request {
  uint16_t tag;
  uint8_t op;
  uint32_t flags;
  uint64_t sector;
  uint32_t nrSectors;
  std::vector<uint8_t> data;  // WRITE payload, copied out of the tag buffer
};

struct Completion {
  uint16_t tag;
  int32_t result;
};

// A ublk device and its queue thread. Owned by a JS object (UblkDevice); freed after stop.
class Device {
 public:
  uint32_t devId = UINT32_MAX;
  // Stored in the device's ublksrv_flags at ADD_DEV (the driver keeps that field as given, for the server's
  // own use) and in the attach record: after a crash it names this very device, even once the kernel has
  // stopped it and reset its ublksrv_pid to -1.
  uint64_t cookie = 0;
  uint16_t depth = 64;
  uint32_t maxIoBytes = 512 << 10;
  int ctrlFd = -1;
  int charFd = -1;
  int eventFd = -1;
  void* descs = MAP_FAILED;
  size_t descsSize = 0;
  uint8_t* buffers = nullptr;
  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  std::mutex mu;
  std::vector<Completion> done;
  std::atomic<bool> stopping{false};  // STOP_DEV has returned: the queue thread may leave
  std::atomic<bool> threadExited{false};
  std::string threadError;
  bool added = false, started = false, released = false;

  ~Device() {
    if (thread.joinable()) thread.join();
    if (descs != MAP_FAILED) munmap(descs, descsSize);
    free(buffers);
    if (charFd >= 0) close(charFd);
    if (eventFd >= 0) close(eventFd);
    if (ctrlFd >= 0) close(ctrlFd);
  }

  uint8_t* Buffer(uint16_t tag) { return buffers + static_cast<size_t>(tag) * maxIoBytes; }

  // Called on the JS thread.
  void Complete(uint16_t tag, int32_t result) {
    {
      std::lock_guard<std::mutex> g(mu);
      done.push_back({tag, result});
    }
    uint64_t one = 1;
    ssize_t w = write(eventFd, &one, sizeof one);
    (void)w;  // the counter cannot overflow in practice; a failed wake only delays the commit to the next one
  }

  void Run();
};

// On the JS thread: onRequest(tag, op, flags, sector, nrSectors, data?). The JS handler must not throw.
void CallJs(Napi::Env env, Napi::Function fn, Request* rq) {
  if (env != nullptr && !fn.IsEmpty()) {
    Napi::Value data = rq->op == UBLK_IO_OP_WRITE ? Napi::Buffer<uint8_t>::Copy(env, rq->data.data(), rq->data.size()).As<Napi::Value>()
                                                  : env.Undefined();
    fn.Call({Napi::Number::New(env, rq->tag), Napi::Number::New(env, rq->op), Napi::Number::New(env, rq->flags),
             Napi::Number::New(env, static_cast<double>(rq->sector)), Napi::Number::New(env, rq->nrSectors), data});
  }
  delete rq;
}

void Device::Run() {
  Ring ring;
  unsigned entries = 1;
  while (entries < static_cast<unsigned>(depth) + 2) entries <<= 1;
  int e = ring.Init(entries);
  if (e < 0) {
    threadError = std::string("queue io_uring_setup: ") + strerror(-e);
    threadExited = true;
    return;
  }
  auto ioCmd = [&](unsigned op, uint16_t tag, int32_t result) {
    io_uring_sqe* sqe = ring.Get();
    if (!sqe) {
      ring.Submit(0);
      sqe = ring.Get();
    }
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = charFd;
    sqe->off = op;
    sqe->user_data = tag;
    ublksrv_io_cmd c{};
    c.q_id = 0;
    c.tag = tag;
    c.result = result;
    c.addr = reinterpret_cast<uint64_t>(Buffer(tag));
    memcpy(reinterpret_cast<char*>(sqe) + 48, &c, sizeof c);
  };
  uint64_t evBuf = 0;
  auto armEvent = [&]() {
    io_uring_sqe* sqe = ring.Get();
    if (!sqe) {
      ring.Submit(0);
      sqe = ring.Get();
    }
    sqe->opcode = IORING_OP_READ;
    sqe->fd = eventFd;
    sqe->addr = reinterpret_cast<uint64_t>(&evBuf);
    sqe->len = sizeof evBuf;
    sqe->user_data = kEventTag;
  };
  for (uint16_t t = 0; t < depth; t++) ioCmd(kIoFetchReq, t, 0);
  armEvent();
  for (;;) {
    if ((e = ring.Submit(1)) < 0) {
      threadError = std::string("queue io_uring_enter: ") + strerror(-e);
      break;
    }
    bool wake = false;
    ring.Reap([&](uint64_t ud, int res) {
      if (ud == kEventTag) {
        wake = true;
        return;
      }
      // A negative result (UBLK_IO_RES_ABORT) means the device is going away: the tag is not re-armed.
      if (res < 0) return;
      // UBLK_IO_RES_OK: request `tag` is described in its io_desc; for writes the data is in our buffer.
      uint16_t tag = static_cast<uint16_t>(ud);
      const auto* d = static_cast<const ublksrv_io_desc*>(descs) + tag;
      auto* rq = new Request{tag, static_cast<uint8_t>(d->op_flags & 0xff), d->op_flags >> 8, d->start_sector, d->nr_sectors, {}};
      if (rq->op == UBLK_IO_OP_WRITE) {
        size_t n = static_cast<size_t>(rq->nrSectors) << 9;
        if (n > maxIoBytes) n = maxIoBytes;
        rq->data.assign(Buffer(tag), Buffer(tag) + n);
      }
      if (tsfn.NonBlockingCall(rq, CallJs) != napi_ok) {
        delete rq;  // JS is gone: fail the request rather than leave the kernel waiting
        std::lock_guard<std::mutex> g(mu);
        done.push_back({tag, -EIO});
        wake = true;
      }
    });
    if (!wake) continue;
    std::vector<Completion> batch;
    {
      std::lock_guard<std::mutex> g(mu);
      batch.swap(done);
    }
    for (const auto& c : batch) ioCmd(kIoCommitAndFetchReq, c.tag, c.result);
    if (stopping) {
      // STOP_DEV has returned: hand over the last results, then close the ring, which cancels the
      // outstanding fetches (ublk's uring_cmd cancel) so that DEL_DEV can release the device.
      ring.Submit(0);
      break;
    }
    armEvent();
  }
  threadExited = true;
}

std::string HexCookie(uint64_t v) {
  char buf[17];
  snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// ---- orphans of a killed daemon ----

struct OrphanResult {
  const char* status = "failed";  // deleted | gone | foreign | in-use | failed (see native-attach.ts)
  std::string reason;
};

// Delete ublk device `devId` if it is the one a dead daemon (pid `pid`) added with `cookie`: its ublksrv_flags
// carry the cookie, its ublksrv_pid is that daemon's or -1 (the kernel stopped the disk when the server's
// io_uring went away), and nobody holds its char device (a live server always does; the driver allows one
// opener). Holding the char device ourselves keeps anyone from taking it over until STOP_DEV is done.
// `allowSyncDel`: the disk is not held, so the waiting DEL_DEV may stand in where DEL_DEV_ASYNC is missing.
OrphanResult DeleteOrphan(uint32_t devId, int pid, uint64_t cookie, bool allowSyncDel) {
  OrphanResult out;
  auto say = [&](const char* status, const std::string& why) {
    out.status = status;
    out.reason = why;
    return out;
  };
  if (pid <= 0 || pid == getpid()) return say("foreign", "pid " + std::to_string(pid) + " is not a previous daemon");
  int ctrl = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
  if (ctrl < 0) {
    int e = errno;
    return say(e == ENOENT ? "gone" : "failed", std::string("open /dev/ublk-control: ") + strerror(e));
  }
  struct CloseFd {
    int fd;
    ~CloseFd() { if (fd >= 0) close(fd); }
  } ctrlGuard{ctrl};
  ublksrv_ctrl_dev_info info{};
  ublksrv_ctrl_cmd c{};
  c.dev_id = devId;
  c.queue_id = UINT16_MAX;
  c.len = sizeof info;
  c.addr = reinterpret_cast<uint64_t>(&info);
  int r = CtrlCmd(ctrl, kCmdGetDevInfo, c);
  if (r == -ENODEV) return say("gone", "no ublk device " + std::to_string(devId));
  if (r < 0) return say("failed", std::string(OpName(kCmdGetDevInfo)) + ": " + strerror(-r));
  if (info.ublksrv_flags != cookie) return say("foreign", "ublk device " + std::to_string(devId) + " is not the one the previous daemon added");
  if (info.ublksrv_pid != pid && info.ublksrv_pid != -1)
    return say("foreign", "ublk device " + std::to_string(devId) + " is served by pid " + std::to_string(info.ublksrv_pid));
  std::string cdev = "/dev/ublkc" + std::to_string(devId);
  int charFd = -1;
  for (int i = 0; i < 300 && charFd < 0; i++) {  // a dying server's ring may hold it for a moment after exit
    charFd = open(cdev.c_str(), O_RDWR | O_CLOEXEC);
    if (charFd < 0 && errno != EBUSY) break;
    if (charFd < 0) usleep(10000);
  }
  if (charFd < 0) {
    int e = errno;
    return say(e == EBUSY ? "in-use" : "failed", "open " + cdev + ": " + strerror(e) + (e == EBUSY ? " (its server still holds it)" : ""));
  }
  CloseFd charGuard{charFd};
  const bool wasLive = info.state != UBLK_S_DEV_DEAD;
  c = ublksrv_ctrl_cmd{};
  c.dev_id = devId;
  c.queue_id = UINT16_MAX;
  if ((r = CtrlCmd(ctrl, kCmdStopDev, c)) < 0) return say("failed", std::string(OpName(kCmdStopDev)) + ": " + strerror(-r));
  close(charFd);  // the waiting DEL_DEV would wait for this reference too
  charGuard.fd = -1;
  r = CtrlCmd(ctrl, kCmdDelDevAsync, c);
  if (r == -EOPNOTSUPP) {
    // A kernel without a working DEL_DEV_ASYNC: DEL_DEV waits until the disk is released, forever while a
    // file system is still mounted on it, so only when nothing holds it.
    if (!allowSyncDel) return say("in-use", "this kernel has no UBLK_CMD_DEL_DEV_ASYNC and the disk is still held");
    r = CtrlCmd(ctrl, kCmdDelDev, c);
    if (r < 0) return say("failed", std::string(OpName(kCmdDelDev)) + ": " + strerror(-r));
  } else if (r < 0) {
    return say("failed", std::string(OpName(kCmdDelDevAsync)) + ": " + strerror(-r));
  }
  return say("deleted", wasLive ? "its disk was still live" : "its disk had been stopped by the kernel");
}

class DeleteOrphanWorker : public Napi::AsyncWorker {
 public:
  DeleteOrphanWorker(Napi::Env env, uint32_t devId, int pid, uint64_t cookie, bool allowSyncDel)
      : Napi::AsyncWorker(env), devId_(devId), pid_(pid), cookie_(cookie), allowSyncDel_(allowSyncDel), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { r_ = DeleteOrphan(devId_, pid_, cookie_, allowSyncDel_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("deleted", Napi::Boolean::New(env, std::strcmp(r_.status, "deleted") == 0));
    o.Set("status", Napi::String::New(env, r_.status));
    o.Set("reason", Napi::String::New(env, r_.reason));
    deferred_.Resolve(o);
  }

 private:
  uint32_t devId_;
  int pid_;
  uint64_t cookie_;
  bool allowSyncDel_;
  OrphanResult r_;
  Napi::Promise::Deferred deferred_;
};

// ---- JS side ----

struct CreateParams {
  uint64_t sizeBytes = 0;
  uint32_t logicalBlockSize = 512;
  bool readOnly = false;
  uint16_t depth = 64;
  uint32_t maxIoBytes = 512 << 10;
};


class UblkDevice : public Napi::ObjectWrap<UblkDevice> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "UblkDevice",
                       {InstanceMethod("complete", &UblkDevice::CompleteJs), InstanceMethod("start", &UblkDevice::StartJs),
                        InstanceAccessor("devId", &UblkDevice::DevId, nullptr), InstanceAccessor("cookie", &UblkDevice::Cookie, nullptr)});
  }
  explicit UblkDevice(const Napi::CallbackInfo& info) : Napi::ObjectWrap<UblkDevice>(info) {}
  std::shared_ptr<Device> dev;
  CreateParams params;
  bool startCalled = false;

 private:
  Napi::Value StartJs(const Napi::CallbackInfo& info);
  Napi::Value DevId(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), dev ? dev->devId : UINT32_MAX); }
  Napi::Value Cookie(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dev ? HexCookie(dev->cookie) : ""); }

  // complete(tag, result, data?): result = bytes done or -errno; data = READ payload to copy to the kernel.
  Napi::Value CompleteJs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!dev || dev->threadExited) return env.Undefined();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "complete(tag, result, data?)");
    uint32_t tag = info[0].As<Napi::Number>().Uint32Value();
    int32_t result = info[1].As<Napi::Number>().Int32Value();
    if (tag >= dev->depth) throw Napi::RangeError::New(env, "tag out of range");
    if (info.Length() >= 3 && info[2].IsBuffer()) {
      auto b = info[2].As<Napi::Buffer<uint8_t>>();
      size_t n = b.Length() < dev->maxIoBytes ? b.Length() : dev->maxIoBytes;
      memcpy(dev->Buffer(static_cast<uint16_t>(tag)), b.Data(), n);
    }
    dev->Complete(static_cast<uint16_t>(tag), result);
    return env.Undefined();
  }
};

Napi::FunctionReference* g_ctor = nullptr;


int Log2(uint32_t v) {
  int s = 0;
  while ((1u << s) < v) s++;
  return s;
}

// Everything up to a started device; on failure, undoes what it did. Runs on the thread pool.
bool StartDevice(Device& d, const CreateParams& p, std::string* err) {
  auto fail = [&](const std::string& what, int e) {
    *err = what + ": " + strerror(e < 0 ? -e : e);
    return false;
  };
  d.ctrlFd = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
  if (d.ctrlFd < 0) return fail("open /dev/ublk-control", errno);
  ublksrv_ctrl_dev_info info{};
  info.nr_hw_queues = 1;
  info.queue_depth = d.depth;
  info.max_io_buf_bytes = d.maxIoBytes;
  info.dev_id = UINT32_MAX;
  info.ublksrv_pid = getpid();
  info.ublksrv_flags = d.cookie;
  ublksrv_ctrl_cmd c{};
  c.dev_id = UINT32_MAX;
  c.queue_id = UINT16_MAX;
  c.len = sizeof info;
  c.addr = reinterpret_cast<uint64_t>(&info);
  int r = CtrlCmd(d.ctrlFd, kCmdAddDev, c);
  if (r < 0) return fail(OpName(kCmdAddDev), r);
  d.devId = info.dev_id;
  d.added = true;
  d.depth = info.queue_depth;  // the kernel may lower it
  d.maxIoBytes = info.max_io_buf_bytes;

  ublk_params params{};
  params.len = sizeof params;
  params.types = UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
  params.basic.attrs = UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA | (p.readOnly ? UBLK_ATTR_READ_ONLY : 0);
  params.basic.logical_bs_shift = static_cast<uint8_t>(Log2(p.logicalBlockSize));
  params.basic.physical_bs_shift = static_cast<uint8_t>(Log2(p.logicalBlockSize > 4096 ? p.logicalBlockSize : 4096));
  params.basic.io_min_shift = params.basic.logical_bs_shift;
  params.basic.io_opt_shift = 17;  // 128 KiB, as the NBD driver advertises
  params.basic.max_sectors = d.maxIoBytes >> 9;
  params.basic.dev_sectors = p.sizeBytes >> 9;
  params.discard.discard_granularity = p.logicalBlockSize;
  params.discard.max_discard_sectors = UINT32_MAX >> 9;
  params.discard.max_write_zeroes_sectors = UINT32_MAX >> 9;
  params.discard.max_discard_segments = 1;
  c = ublksrv_ctrl_cmd{};
  c.dev_id = d.devId;
  c.queue_id = UINT16_MAX;
  c.len = sizeof params;
  c.addr = reinterpret_cast<uint64_t>(&params);
  if ((r = CtrlCmd(d.ctrlFd, kCmdSetParams, c)) < 0) return fail(OpName(kCmdSetParams), r);

  std::string cdev = "/dev/ublkc" + std::to_string(d.devId);
  for (int i = 0; i < 200 && d.charFd < 0; i++) {  // devtmpfs makes the node during ADD_DEV; udev may chmod it later
    d.charFd = open(cdev.c_str(), O_RDWR | O_CLOEXEC);
    if (d.charFd < 0) usleep(10000);
  }
  if (d.charFd < 0) return fail("open " + cdev, errno);
  long page = sysconf(_SC_PAGESIZE);
  d.descsSize = (d.depth * sizeof(ublksrv_io_desc) + page - 1) / page * page;
  d.descs = mmap(nullptr, d.descsSize, PROT_READ, MAP_SHARED | MAP_POPULATE, d.charFd, 0);
  if (d.descs == MAP_FAILED) return fail("mmap " + cdev, errno);
  if (posix_memalign(reinterpret_cast<void**>(&d.buffers), static_cast<size_t>(page), static_cast<size_t>(d.depth) * d.maxIoBytes) != 0)
    return fail("allocating I/O buffers", ENOMEM);
  d.eventFd = eventfd(0, EFD_CLOEXEC);
  if (d.eventFd < 0) return fail("eventfd", errno);
  d.thread = std::thread([&d] { d.Run(); });

  // START_DEV returns once every tag has a FETCH_REQ outstanding; then /dev/ublkbN exists.
  c = ublksrv_ctrl_cmd{};
  c.dev_id = d.devId;
  c.queue_id = UINT16_MAX;
  c.data[0] = static_cast<uint64_t>(getpid());
  if ((r = CtrlCmd(d.ctrlFd, kCmdStartDev, c)) < 0) return fail(OpName(kCmdStartDev), r);
  d.started = true;
  return true;
}

// STOP_DEV (the queue's outstanding fetches then complete with ABORT), join the thread, DEL_DEV.
std::string StopDevice(Device& d) {
  std::string err;
  if (d.added) {
    ublksrv_ctrl_cmd c{};
    c.dev_id = d.devId;
    c.queue_id = UINT16_MAX;
    int r = CtrlCmd(d.ctrlFd, kCmdStopDev, c);
    if (r < 0 && d.started) err = std::string(OpName(kCmdStopDev)) + ": " + strerror(-r);
  }
  d.stopping = true;
  if (d.eventFd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(d.eventFd, &one, sizeof one);
    (void)w;
  }
  if (d.thread.joinable()) d.thread.join();
  if (d.descs != MAP_FAILED) {
    munmap(d.descs, d.descsSize);
    d.descs = MAP_FAILED;
  }
  if (d.charFd >= 0) {
    close(d.charFd);  // DEL_DEV waits for the char device to be released
    d.charFd = -1;
  }
  if (d.added) {
    ublksrv_ctrl_cmd c{};
    c.dev_id = d.devId;
    c.queue_id = UINT16_MAX;
    int r = CtrlCmd(d.ctrlFd, kCmdDelDev, c);
    if (r < 0 && err.empty()) err = std::string(OpName(kCmdDelDev)) + ": " + strerror(-r);
    d.added = false;
  }
  return err;
}

class StartWorker : public Napi::AsyncWorker {
 public:
  StartWorker(Napi::Env env, std::shared_ptr<Device> d, CreateParams p, Napi::Object handle)
      : Napi::AsyncWorker(env), d_(std::move(d)), p_(p), deferred_(Napi::Promise::Deferred::New(env)) {
    handle_ = Napi::Persistent(handle);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    if (!StartDevice(*d_, p_, &err_)) {
      StopDevice(*d_);
      ok_ = false;
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!ok_) {
      d_->released = true;
      d_->tsfn.Release();
      Napi::Error e = Napi::Error::New(env, "ublk: " + err_);
      e.Set("code", Napi::String::New(env, "EIO"));
      deferred_.Reject(e.Value());
      return;
    }
    deferred_.Resolve(handle_.Value());
  }

 private:
  std::shared_ptr<Device> d_;
  CreateParams p_;
  Napi::ObjectReference handle_;
  std::string err_;
  bool ok_ = true;
  Napi::Promise::Deferred deferred_;
};

class StopWorker : public Napi::AsyncWorker {
 public:
  StopWorker(Napi::Env env, std::shared_ptr<Device> d) : Napi::AsyncWorker(env), d_(std::move(d)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = StopDevice(*d_); }
  void OnOK() override {
    if (!d_->released) {
      d_->released = true;
      d_->tsfn.Release();
    }
    if (err_.empty()) deferred_.Resolve(Env().Undefined());
    else deferred_.Reject(Napi::Error::New(Env(), "ublk: " + err_).Value());
  }

 private:
  std::shared_ptr<Device> d_;
  std::string err_;
  Napi::Promise::Deferred deferred_;
};

// ublkCreate({sizeBytes, logicalBlockSize, readOnly, queueDepth, maxIoBytes}, onRequest) -> UblkDevice (not started)
// onRequest(tag, op, flags, sector, nrSectors, data?) is called on the JS thread for every request.
Napi::Value UblkCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) throw Napi::TypeError::New(env, "ublkCreate(options, onRequest)");
  Napi::Object o = info[0].As<Napi::Object>();
  CreateParams p;
  Napi::Value size = o.Get("sizeBytes");
  if (!size.IsNumber()) throw Napi::TypeError::New(env, "sizeBytes must be a number");
  p.sizeBytes = static_cast<uint64_t>(size.As<Napi::Number>().DoubleValue());
  if (o.Get("logicalBlockSize").IsNumber()) p.logicalBlockSize = o.Get("logicalBlockSize").As<Napi::Number>().Uint32Value();
  if (o.Get("readOnly").IsBoolean()) p.readOnly = o.Get("readOnly").As<Napi::Boolean>().Value();
  if (o.Get("queueDepth").IsNumber()) p.depth = static_cast<uint16_t>(o.Get("queueDepth").As<Napi::Number>().Uint32Value());
  if (o.Get("maxIoBytes").IsNumber()) p.maxIoBytes = o.Get("maxIoBytes").As<Napi::Number>().Uint32Value();
  if (p.logicalBlockSize < 512 || p.logicalBlockSize > 4096 || (p.logicalBlockSize & (p.logicalBlockSize - 1)))
    throw Napi::RangeError::New(env, "logicalBlockSize must be 512..4096, a power of two");
  if (p.depth < 1 || p.depth > 4096) throw Napi::RangeError::New(env, "queueDepth must be 1..4096");
  if (p.maxIoBytes < 4096 || p.maxIoBytes > (1u << 20) || (p.maxIoBytes & 4095)) throw Napi::RangeError::New(env, "maxIoBytes must be 4 KiB..1 MiB, page aligned");
  if (p.sizeBytes == 0 || p.sizeBytes % p.logicalBlockSize) throw Napi::RangeError::New(env, "sizeBytes must be a positive multiple of the block size");

  auto d = std::make_shared<Device>();
  while (d->cookie == 0)
    if (getrandom(&d->cookie, sizeof d->cookie, 0) != static_cast<ssize_t>(sizeof d->cookie)) throw Napi::Error::New(env, std::string("getrandom: ") + strerror(errno));
  d->depth = p.depth;
  d->maxIoBytes = p.maxIoBytes;
  // Requests cross threads as Request*; CallJs consumes them.
  d->tsfn = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "ublk-queue", 0, 1);
  Napi::Object handle = g_ctor->New({});
  UblkDevice* u = UblkDevice::Unwrap(handle);
  u->dev = d;
  u->params = p;
  return handle;
}

// handle.start() -> Promise<handle>: ADD_DEV, SET_PARAMS, queue thread, START_DEV. Requests may arrive (and
// must be completed) before it resolves: add_disk reads the partition table.
Napi::Value UblkDevice::StartJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (startCalled) throw Napi::Error::New(env, "ublk device already started");
  startCalled = true;
  auto* w = new StartWorker(env, dev, params, Value());
  Napi::Promise pr = w->Promise();
  w->Queue();
  return pr;
}

Napi::Value UblkStop(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "ublkStop(device)");
  UblkDevice* u = UblkDevice::Unwrap(info[0].As<Napi::Object>());
  if (!u->dev) throw Napi::Error::New(env, "not a ublk device");
  auto* w = new StopWorker(env, u->dev);
  Napi::Promise pr = w->Promise();
  w->Queue();
  return pr;
}

// ublkDeleteOrphan(devId, pid, cookie, allowSyncDel) -> Promise<{deleted, status, reason}>; never rejects.
Napi::Value UblkDeleteOrphan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsString() || !info[3].IsBoolean())
    throw Napi::TypeError::New(env, "ublkDeleteOrphan(devId, pid, cookie, allowSyncDel)");
  std::string hex = info[2].As<Napi::String>().Utf8Value();
  bool hexOk = hex.size() == 16 && hex.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos;
  uint64_t cookie = hexOk ? std::strtoull(hex.c_str(), nullptr, 16) : 0;
  if (cookie == 0) throw Napi::TypeError::New(env, "cookie must be 16 hex digits");
  auto* w = new DeleteOrphanWorker(env, info[0].As<Napi::Number>().Uint32Value(), info[1].As<Napi::Number>().Int32Value(), cookie,
                                   info[3].As<Napi::Boolean>().Value());
  Napi::Promise pr = w->Promise();
  w->Queue();
  return pr;
}

Napi::Value UblkAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  bool ok = access("/dev/ublk-control", R_OK | W_OK) == 0;
  o.Set("control", Napi::Boolean::New(env, ok));
  o.Set("reason", Napi::String::New(env, ok ? "" : "/dev/ublk-control is missing (ublk_drv not loaded)"));
  return o;
}

}  // namespace

void InitUblk(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = UblkDevice::Define(env);
  g_ctor = new Napi::FunctionReference(Napi::Persistent(ctor));
  exports.Set("ublkAvailable", Napi::Function::New(env, UblkAvailable));
  exports.Set("ublkCreate", Napi::Function::New(env, UblkCreate));
  exports.Set("ublkStop", Napi::Function::New(env, UblkStop));
  exports.Set("ublkDeleteOrphan", Napi::Function::New(env, UblkDeleteOrphan));
}

}  // namespace tsdm
