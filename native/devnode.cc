// Device nodes: /dev/mapper/NAME is made as a block special file carrying the attached kernel device's
// major:minor (what libdevmapper does without udev), so `ls -l` and mount(8) show a block device.
#include <cerrno>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "addon.h"

namespace tsdm {
namespace {

// mknodBlock(path, major, minor, mode, gid): a block node; fails with EEXIST if the path exists.
Napi::Value MknodBlock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber() ||
      !info[4].IsNumber())
    throw Napi::TypeError::New(env, "mknodBlock(path, major, minor, mode, gid)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  unsigned major = info[1].As<Napi::Number>().Uint32Value();
  unsigned minor = info[2].As<Napi::Number>().Uint32Value();
  mode_t mode = info[3].As<Napi::Number>().Uint32Value() & 07777;
  int gid = info[4].As<Napi::Number>().Int32Value();
  if (mknod(path.c_str(), S_IFBLK | mode, makedev(major, minor)) < 0) throw ErrnoError(env, errno, "mknod");
  // mknod applies the umask; the node's mode and group are a contract with users (root:disk 0660).
  if (chmod(path.c_str(), mode) < 0 || (gid >= 0 && chown(path.c_str(), 0, static_cast<gid_t>(gid)) < 0)) {
    int err = errno;
    unlink(path.c_str());
    throw ErrnoError(env, err, "chmod/chown");
  }
  return env.Undefined();
}

// devnoOf(rdev as bigint or number) -> {major, minor}: glibc's decoding of a dev_t.
Napi::Value SplitDevno(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t rdev = 0;
  if (info.Length() >= 1 && info[0].IsBigInt()) {
    bool lossless = false;
    rdev = info[0].As<Napi::BigInt>().Uint64Value(&lossless);
  } else if (info.Length() >= 1 && info[0].IsNumber()) {
    rdev = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  } else {
    throw Napi::TypeError::New(env, "splitDevno(rdev)");
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("major", Napi::Number::New(env, major(rdev)));
  o.Set("minor", Napi::Number::New(env, minor(rdev)));
  return o;
}

}  // namespace

void InitDevNode(Napi::Env env, Napi::Object exports) {
  exports.Set("mknodBlock", Napi::Function::New(env, MknodBlock));
  exports.Set("splitDevno", Napi::Function::New(env, SplitDevno));
}

}  // namespace tsdm
