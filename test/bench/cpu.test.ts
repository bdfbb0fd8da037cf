/** The benchmark's CPU accounting (bench/lib/cpu.ts): who is who, and time actually counted. */
import { describe, expect, it } from "vitest";
import { cpuPerEvent, cpuSnapshot, roleOf } from "../../bench/lib/cpu.ts";

describe("CPU accounting", () => {
  it("tells the benchmark's processes apart by their command lines", () => {
    const other = process.pid + 1;
    expect(roleOf(process.pid, "anything")).toBe("writers (harness)");
    expect(roleOf(other, "postgres: postgres bench 127.0.0.1(5432) idle")).toBe("Postgres");
    expect(roleOf(other, "/x/native/bin/postgres -D /tmp/data -p 5432")).toBe("Postgres");
    expect(roleOf(other, "/x/bin/workerd serve --binary --experimental")).toBe("workerd");
    expect(roleOf(other, "/usr/bin/node --max-semi-space-size=1 /repo/dist/cli.js relay")).toBe("relay");
    expect(roleOf(other, "node /repo/node_modules/tsx/dist/cli.mjs /repo/bench/baseline/server.ts")).toBe("baseline server");
    expect(roleOf(other, "node --import tsx /repo/bench/lib/receiver.ts")).toBe("subscribers (harness)");
    expect(roleOf(other, "node /repo/node_modules/tsx/dist/cli.mjs /repo/bench/lib/worker-process.ts")).toBe("wrangler (Node)");
    expect(roleOf(other, "/usr/bin/chromium --headless")).toBeNull();
  });

  it.runIf(process.platform === "linux")("counts the CPU this process spends between two snapshots, as Node does", () => {
    const before = cpuSnapshot();
    const usage = process.cpuUsage();
    const until = performance.now() + 200;
    let spins = 0;
    while (performance.now() < until) spins++;
    const used = process.cpuUsage(usage);
    const perEvent = cpuPerEvent(before, cpuSnapshot(), 2);
    expect(spins).toBeGreaterThan(0);
    // Over 2 "events", in microseconds; /proc counts in 10 ms ticks (one at each end).
    const nodeSays = (used.user + used.system) / 2;
    expect(perEvent["writers (harness)"]).toBeGreaterThan(nodeSays - 12_000);
    expect(perEvent["writers (harness)"]).toBeLessThan(nodeSays + 12_000);
  });
});
