import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT } from "../helpers/daemon.js";
// @ts-expect-error plain ESM script without types
import { installTools } from "./install-tools.mjs";

/**
 * Once per test run: make sure the tools the tests drive are installed (CI installs, never skips), and that
 * dist/ (what bin/tsdmd.js and bin/tsdmsetup.js run) is built from the current sources.
 */
export default function setup(): void {
  installTools();
  if (process.env.TSDM_SKIP_BUILD === "1") return;
  if (!fs.existsSync(path.join(ROOT, "gen", "tsdm", "v1", "tsdm.ts"))) execFileSync("npm", ["run", "-s", "gen"], { cwd: ROOT, stdio: "inherit" });
  execFileSync(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.build.json"], { cwd: ROOT, stdio: "inherit" });
  fs.mkdirSync(path.join(ROOT, "dist", "gen"), { recursive: true });
  fs.copyFileSync(path.join(ROOT, "gen", "descriptors.binpb"), path.join(ROOT, "dist", "gen", "descriptors.binpb"));
}
