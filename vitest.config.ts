import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/setup/global.ts"],
    pool: "forks",
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Tests spawn daemons, loop devices and FUSE mounts: keep the 2-core machine from thrashing.
    maxWorkers: 2,
  },
});
