#!/usr/bin/env node
// tsdmd: the tsdm daemon. Runs the compiled code in dist/ (built by `npm ci` / `npm run build`).
// Backing-file I/O that cannot be done inline runs on the libuv pool. More threads than cores only adds
// contention (measured: 16 threads halved 4 KiB random reads on 2 cores), so size it to the machine.
import os from "node:os";
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, 2 * os.availableParallelism()));
const { runTsdmd } = await import("../dist/daemon/main.js");
// Exit with the code once the daemon is done, even if a failed start left a handle behind.
process.exit(await runTsdmd(process.argv.slice(2)));
