{
  "targets": [
    {
      "target_name": "blockops",
      "sources": ["native/blockops.cc", "native/devnode.cc", "native/nbd_attach.cc", "native/ublk.cc", "native/process.cc"],
      "dependencies": ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"]
    }
  ]
}
