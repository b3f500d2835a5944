#!/usr/bin/env node
// tsdmsetup: the dmsetup-compatible client (compiled code in dist/).
const { main } = await import("../dist/ctl/tsdmsetup.js");
process.exitCode = await main(process.argv.slice(2), { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
