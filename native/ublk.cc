// ublk attach (drivers/block/ublk_drv.c): placeholder until the data plane lands; feature detection only.
#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

#include "addon.h"

namespace tsdm {
namespace {

Napi::Value UblkAvailable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  bool ok = access("/dev/ublk-control", R_OK | W_OK) == 0;
  o.Set("control", Napi::Boolean::New(env, ok));
  o.Set("reason", Napi::String::New(env, ok ? "" : "/dev/ublk-control is missing (ublk_drv not loaded)"));
  return o;
}

}  // namespace

void InitUblk(Napi::Env env, Napi::Object exports) { exports.Set("ublkAvailable", Napi::Function::New(env, UblkAvailable)); }

}  // namespace tsdm
