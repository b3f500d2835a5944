// Shared helpers of the blockops addon and the entry points of its attach modules (one addon, several files).
#pragma once
#include <napi.h>

#include <string>

namespace tsdm {

// An Error like Node's system errors: .code ("EBUSY"), .errno (16), .syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall);

// Exports of the attach modules, registered by blockops.cc's module init.
void InitDevNode(Napi::Env env, Napi::Object exports);  // devnode.cc
void InitNbdAttach(Napi::Env env, Napi::Object exports);  // nbd_attach.cc
void InitUblk(Napi::Env env, Napi::Object exports);  // ublk.cc
void InitProcess(Napi::Env env, Napi::Object exports);  // process.cc

}  // namespace tsdm
