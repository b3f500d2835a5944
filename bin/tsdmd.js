#!/usr/bin/env node
// tsdmd: the tsdm daemon. Runs the compiled code in dist/ (built by `npm ci` / `npm run build`).
// I/O to backing files runs on the libuv pool; give it more threads than the default 4 unless told otherwise.
process.env.UV_THREADPOOL_SIZE ??= "16";
const { runTsdmd } = await import("../dist/daemon/main.js");
process.exitCode = await runTsdmd(process.argv.slice(2));
