/**
 * The capacity model (bench/lib/scale.ts): plans that follow from the costs, a simulation that
 * agrees with queueing when it can be checked by hand, and costs that add up.
 */
import { describe, expect, it } from "vitest";
import { LIMITS, monthlyCost, planChannel, planRelays, PRICES, simulate, socketsPerShardAt, type Costs, type Workload } from "../../bench/lib/scale.ts";

const costs: Costs = { ingestMs: 8, perEventMs: 0.02, sendUs: 50, rpcMs: 2, networkMs: 0, relayEventsPerSecond: 10_000, triggerUs: 40 };
const workload = (w: Partial<Workload>): Workload => ({
  label: "t",
  channels: 1,
  subscribersPerChannel: 100,
  publishesPerSecond: 1,
  eventsPerPublish: 1,
  connectsPerSubscriberPerDay: 0,
  ...w,
});

describe("planChannel", () => {
  it("leaves a small channel unsharded, with its sends in the root's time", () => {
    const plan = planChannel(costs, workload({ subscribersPerChannel: 100 }));
    expect(plan.shards).toBe(0);
    expect(plan.rootServiceMs).toBeCloseTo(8 + 100 * 0.05);
    expect(plan.problems).toEqual([]);
  });

  it("shards a channel past one object's sockets, with every subscriber placed", () => {
    const plan = planChannel(costs, workload({ subscribersPerChannel: 1_000_000 }));
    expect(plan.socketsPerShard).toBeLessThanOrEqual(LIMITS.defaultSocketsPerChannel);
    expect(plan.shards * plan.socketsPerShard).toBeGreaterThanOrEqual(1_000_000);
    // (0.5 s of budget per publish - 2 ms of RPC) / 50 us = 9,960 sockets a shard: 101 shards.
    expect(plan.shards).toBe(101);
    expect(plan.problems).toEqual([]);
  });

  it("uses more, smaller shards as publishes get faster, so each shard keeps up", () => {
    const slow = planChannel(costs, workload({ subscribersPerChannel: 1_000_000, publishesPerSecond: 1 }));
    const fast = planChannel(costs, workload({ subscribersPerChannel: 1_000_000, publishesPerSecond: 50 }));
    expect(fast.shards).toBeGreaterThan(slow.shards);
    expect(fast.shardUtilization).toBeLessThanOrEqual(0.5 + 1e-9);
    expect(socketsPerShardAt(costs, 50)).toBe(Math.floor(((0.5 / 50) * 1000 - 2) * 1000 / 50));
  });

  it("says what does not fit", () => {
    const plan = planChannel(costs, workload({ subscribersPerChannel: 1_000_000, publishesPerSecond: 2000 }));
    expect(plan.problems.join("; ")).toMatch(/soft limit of 1000/);
    expect(plan.problems.join("; ")).toMatch(/cannot keep up|time budget|shards/);
  });
});

describe("simulate", () => {
  it("matches the unloaded latency when publishes rarely queue", () => {
    const w = workload({ subscribersPerChannel: 20_000, publishesPerSecond: 0.01 });
    const plan = planChannel(costs, w);
    const sim = simulate(costs, w, plan, 100_000);
    expect(sim.stable).toBe(true);
    // Random placement makes the busiest shard a little busier than the average one.
    expect(sim.p50).toBeGreaterThanOrEqual(plan.unloadedLatencyMs * 0.95);
    expect(sim.p50).toBeLessThan(plan.unloadedLatencyMs * 1.2);
  });

  it("agrees with M/D/1 queueing at the root (mean wait = rho * s / (2 (1 - rho)))", () => {
    // Unsharded, service s = 8 + 100 * 0.05 = 13 ms; at 50 publishes/s rho = 0.65.
    const w = workload({ subscribersPerChannel: 100, publishesPerSecond: 50 });
    const plan = planChannel({ ...costs }, { ...w, publishesPerSecond: 1 }); // plan unsharded
    const sim = simulate(costs, w, { ...plan, rootUtilization: 0.65 }, 4000, 7);
    const rho = 0.65;
    const meanWait = (rho * 13) / (2 * (1 - rho));
    // The median of a sojourn sits below its mean; check the mean through p50..p99 bounds.
    expect(sim.p50).toBeGreaterThan(13);
    expect(sim.p50).toBeLessThan(13 + meanWait * 1.5);
    expect(sim.p99).toBeGreaterThan(13 + meanWait);
  });

  it("reports a tree that cannot keep up as unstable, with a growing backlog", () => {
    const w = workload({ subscribersPerChannel: 100, publishesPerSecond: 200 }); // 13 ms each: 2.6x overloaded
    const plan = { ...planChannel(costs, { ...w, publishesPerSecond: 1 }), rootUtilization: 2.6 };
    const sim = simulate(costs, w, plan, 10);
    expect(sim.stable).toBe(false);
    expect(sim.backlogAtEnd).toBeGreaterThan(1000);
  });
});

describe("monthlyCost and planRelays", () => {
  it("charges only the minimum for a workload inside the included usage", () => {
    const w = workload({ publishesPerSecond: 0.1 }); // 259,200 publishes a month: under 1M requests
    expect(monthlyCost(costs, w, planChannel(costs, w)).usd).toBe(PRICES.monthlyMinimum);
  });

  it("counts one object request per publish at the root and one per shard", () => {
    const w = workload({ subscribersPerChannel: 1_000_000 });
    const plan = planChannel(costs, w);
    const month = 30 * 24 * 3600;
    expect(monthlyCost(costs, w, plan).objectRequests).toBe(month * (1 + plan.shards));
  });

  it("plans relay partitions from the measured drain rate", () => {
    expect(planRelays(costs, 100_000)).toEqual({ partitions: Math.ceil(100_000 / 7_000), triggerCores: 4 });
    expect(planRelays(costs, 100).partitions).toBe(1);
  });
});
