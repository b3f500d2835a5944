#!/usr/bin/env node
// The CI test command: the whole vitest suite, then the closing line CI reads: "N passed, N failed[, N skipped]".
import { spawn } from "node:child_process";
import fs from "node:fs";

const results = ".vitest-results.json";
fs.rmSync(results, { force: true });
const child = spawn(process.execPath, ["node_modules/vitest/vitest.mjs", "run", "--reporter=default", "--reporter=json", `--outputFile=${results}`, ...process.argv.slice(2)], {
  stdio: "inherit",
});
const code = await new Promise((resolve) => child.on("close", (c) => resolve(c ?? 1)));
let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const r = JSON.parse(fs.readFileSync(results, "utf8"));
  passed = r.numPassedTests;
  failed = r.numFailedTests;
  skipped = (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  // A suite that failed to load counts as a failure even though it ran no test.
  failed += (r.testResults ?? []).filter((s) => s.status === "failed" && (s.assertionResults ?? []).length === 0).length;
} catch {
  failed = Math.max(failed, 1);
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
process.exit(code === 0 && failed === 0 ? 0 : 1);
