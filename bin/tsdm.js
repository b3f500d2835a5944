#!/usr/bin/env node
// tsdm: offline tools (replay-log, era, bow-restore), compiled code in dist/.
const { main } = await import("../dist/tools/tsdm.js");
process.exitCode = await main(process.argv.slice(2));
