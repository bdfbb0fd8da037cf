/**
 * The capacity model (bench/lib/scale.ts): relay batching and shard coalescing that satisfy their
 * own equations, plans that follow from the costs, a simulation that agrees with queueing theory
 * where it can be checked by hand, and bills that add up.
 */
import { describe, expect, it } from "vitest";
import {
  type Costs,
  channelPublishes,
  DELIVERY_BUDGET_MS,
  LIMITS,
  monthlyCost,
  PRICES,
  planChannel,
  planRelays,
  shardLoad,
  simulate,
  type Workload,
} from "../../bench/lib/scale.ts";

const costs: Costs = {
  ingestMs: 8,
  perEventMs: 0.02,
  perChannelMs: 1,
  sendUs: 50,
  sendPerEventUs: 1,
  rpcMs: 2,
  rpcRootMs: 1,
  networkMs: 0,
  relayEventsPerSecond: 10_000,
  triggerUs: 40,
};
const workload = (w: Partial<Workload>): Workload => ({
  label: "t",
  channels: 1,
  subscribersPerChannel: 100,
  eventsPerSecond: 1,
  connectsPerSubscriberPerDay: 0,
  ...w,
});
const MONTH = 30 * 24 * 3600;

describe("planRelays and channelPublishes", () => {
  it("plans partitions from the measured drain rate, with headroom", () => {
    const plan = planRelays(costs, workload({ channels: 1000, eventsPerSecond: 100 }));
    expect(plan.partitions).toBe(Math.ceil(100_000 / 7_000));
    expect(plan.triggerCores).toBeCloseTo(4);
    expect(planRelays(costs, workload({ eventsPerSecond: 100 })).partitions).toBe(1);
  });

  it("batches a loaded partition: a batch holds what arrived during the previous round trip", () => {
    const plan = planRelays(costs, workload({ channels: 70, eventsPerSecond: 100 })); // 7,000 events/s, one partition
    expect(plan.partitions).toBe(1);
    // b = L x T, and T = ingestMs + b x c with c = (100 ms per full batch - 8 ms) / 1000.
    expect(plan.eventsPerRequest).toBeCloseTo(7 * plan.batchIntervalMs, 6);
    expect(plan.batchIntervalMs).toBeCloseTo(8 + plan.eventsPerRequest * 0.092, 6);
    expect(plan.requestsPerSecond).toBeLessThan(100);
  });

  it("sends each event of a quiet system on its own", () => {
    const plan = planRelays(costs, workload({ eventsPerSecond: 1 }));
    expect(plan.requestsPerSecond).toBeCloseTo(1);
    expect(plan.batchIntervalMs).toBeCloseTo(8, 1);
    const c = channelPublishes(workload({ eventsPerSecond: 1 }), plan);
    expect(c.publishesPerSecond).toBeCloseTo(1, 1);
  });

  it("folds a busy channel's events into one publish per request", () => {
    const w = workload({ channels: 70, eventsPerSecond: 100 });
    const relays = planRelays(costs, w);
    const c = channelPublishes(w, relays);
    expect(c.publishesPerSecond).toBeLessThan(relays.requestsPerSecond);
    expect(c.publishesPerSecond * c.eventsPerPublish).toBeCloseTo(100, 6);
    expect(c.eventsPerPublish).toBeGreaterThan(1);
  });
});

describe("shardLoad", () => {
  it("sends each publish on its own while the shard keeps up", () => {
    const l = shardLoad(costs, 1000, 5, 1); // 1 + 50 ms per delivery, 5 a second
    expect(l).toMatchObject({ deliveriesPerSecond: 5, eventsPerDelivery: 1, stable: true });
    expect(l.deliveryMs).toBeCloseTo(51);
    expect(l.utilization).toBeCloseTo(0.255);
  });

  it("coalesces back to back once publishes outrun deliveries, and solves its own fixed point", () => {
    const l = shardLoad(costs, 10_000, 50, 1); // 501 ms per delivery of one event: saturated
    expect(l.stable).toBe(true);
    expect(l.utilization).toBe(1);
    expect(l.deliveriesPerSecond).toBeLessThan(50);
    // D = fixed + (k - 1) x perEvent with k = rate x D.
    expect(l.deliveryMs).toBeCloseTo(501 + (l.eventsPerDelivery - 1) * 10, 6);
    expect(l.eventsPerDelivery).toBeCloseTo(0.05 * l.deliveryMs, 6);
  });

  it("cannot keep up once each event's share of the sends outgrows the time between events", () => {
    expect(shardLoad(costs, 10_000, 200, 1).stable).toBe(false); // 10 ms per event, 5 ms apart
  });
});

describe("planChannel", () => {
  it("leaves a small channel unsharded, with its sends in the root's time", () => {
    const plan = planChannel(costs, workload({ subscribersPerChannel: 100 }));
    expect(plan.shards).toBe(0);
    expect(plan.rootPublishMs).toBeCloseTo(1 + 100 * 0.05, 0);
    expect(plan.problems).toEqual([]);
  });

  it("shards past one object's sockets: the fewest shards whose delivery fits the budget", () => {
    const w = workload({ subscribersPerChannel: 1_000_000 });
    const plan = planChannel(costs, w);
    expect(plan.socketsPerShard).toBeLessThanOrEqual(LIMITS.defaultSocketsPerChannel);
    expect(plan.shards * plan.socketsPerShard).toBeGreaterThanOrEqual(1_000_000);
    expect(plan.deliveryMs).toBeLessThanOrEqual(DELIVERY_BUDGET_MS);
    // One shard fewer would not fit: (250 - 1) ms / 50 us = 4,980 sockets a shard.
    expect(plan.shards).toBe(Math.ceil(1_000_000 / 4_980));
    expect(plan.problems).toEqual([]);
  });

  it("keeps up with a hot channel by coalescing, not by more shards", () => {
    // Each further event in a frame costs 0.2 us a socket (a delivery of many events costs little
    // more than one), and issuing an RPC 0.1 ms of the root's time.
    const c = { ...costs, sendPerEventUs: 0.2, rpcMs: 0.2, rpcRootMs: 0.1 };
    const slow = planChannel(c, workload({ subscribersPerChannel: 1_000_000, eventsPerSecond: 1 }));
    const hot = planChannel(c, workload({ subscribersPerChannel: 1_000_000, eventsPerSecond: 100 }));
    expect(hot.stable).toBe(true);
    expect(hot.deliveriesPerSecond).toBeLessThan(hot.publishesPerSecond);
    expect(hot.eventsPerDelivery).toBeGreaterThan(1);
    expect(hot.shards).toBeGreaterThanOrEqual(slow.shards);
  });

  it("says what does not fit", () => {
    const tooBig = planChannel({ ...costs, sendUs: 5000 }, workload({ subscribersPerChannel: 1_000_000 }));
    expect(tooBig.problems.join("; ")).toMatch(/second tree level/);
    const oneChannel = planChannel(costs, workload({ subscribersPerChannel: 10, eventsPerSecond: 100_000 }));
    expect(oneChannel.problems.join("; ")).toMatch(/one relay partition: at most 10000 events\/s/);
    expect(oneChannel.stable).toBe(false);
  });
});

describe("simulate", () => {
  it("matches the unloaded latency when publishes rarely queue", () => {
    const w = workload({ subscribersPerChannel: 20_000, eventsPerSecond: 0.05 });
    const relays = planRelays(costs, w);
    const plan = planChannel(costs, w, relays);
    expect(plan.shards).toBeGreaterThan(0);
    const sim = simulate(costs, w, plan, relays, 40_000);
    // Random placement makes the busiest shard a little busier than the average one.
    expect(sim.mean).toBeGreaterThanOrEqual(plan.unloadedLatencyMs * 0.95);
    expect(sim.mean).toBeLessThan(plan.unloadedLatencyMs * 1.2);
    expect(sim.deliveriesPerPublish).toBeCloseTo(1, 6);
  });

  it("agrees with M/D/1 queueing at an unsharded root (mean sojourn = s + rho s / (2 (1 - rho)))", () => {
    const c = { ...costs, ingestMs: 1, perChannelMs: 1 }; // no Worker hop: only the root's queue
    const w = workload({ subscribersPerChannel: 100, eventsPerSecond: 100 });
    const relays = { ...planRelays(c, w), batchIntervalMs: 0 };
    // One event per publish, service s = 1 + 100 x 0.05 = 6 ms; 100 publishes/s gives rho = 0.6.
    const plan = { ...planChannel(c, w, relays), shards: 0, publishesPerSecond: 100, eventsPerPublish: 1, rootPublishMs: 6 };
    const sim = simulate(c, w, plan, relays, 2_000, 7);
    const expected = 6 + (0.6 * 6) / (2 * 0.4);
    expect(sim.mean).toBeGreaterThan(expected * 0.9);
    expect(sim.mean).toBeLessThan(expected * 1.1);
  });

  it("coalesces at a saturated shard as the analysis says, and stays bounded", () => {
    const w = workload({ subscribersPerChannel: 20_000, eventsPerSecond: 40 });
    const relays = { ...planRelays(costs, w), batchIntervalMs: 0 };
    const plan = { ...planChannel(costs, w), shards: 2, socketsPerShard: 10_000, publishesPerSecond: 40, eventsPerPublish: 1 };
    const analytic = shardLoad(costs, 10_000, 40, 1);
    const sim = simulate(costs, w, plan, relays, 600, 3);
    expect(sim.deliveriesPerPublish).toBeLessThan(0.2);
    expect(sim.deliveriesPerPublish).toBeGreaterThan((analytic.deliveriesPerSecond / 40) * 0.8);
    expect(sim.backlogMs).toBeLessThan(3 * analytic.deliveryMs);
    expect(sim.p99).toBeLessThan(3 * analytic.deliveryMs);
  });

  it("shows the backlog of a shard that cannot keep up growing with the run", () => {
    const w = workload({ subscribersPerChannel: 20_000, eventsPerSecond: 200 });
    const relays = { ...planRelays(costs, w), batchIntervalMs: 0 };
    const plan = { ...planChannel(costs, w), shards: 2, socketsPerShard: 10_000, publishesPerSecond: 200, eventsPerPublish: 1 };
    const short = simulate(costs, w, plan, relays, 20, 5);
    const long = simulate(costs, w, plan, relays, 80, 5);
    expect(long.backlogMs).toBeGreaterThan(2 * short.backlogMs);
    expect(short.backlogMs).toBeGreaterThan(1000);
  });
});

describe("monthlyCost", () => {
  it("charges only the minimum for a workload inside the included usage", () => {
    const w = workload({ eventsPerSecond: 0.1 }); // 259,200 publishes a month: under 1M requests
    const relays = planRelays(costs, w);
    expect(monthlyCost(costs, w, planChannel(costs, w, relays), relays).usd).toBe(PRICES.monthlyMinimum);
  });

  it("counts one object request per publish at the root and one per shard delivery", () => {
    const w = workload({ subscribersPerChannel: 1_000_000, eventsPerSecond: 100 });
    const relays = planRelays(costs, w);
    const plan = planChannel(costs, w, relays);
    const bill = monthlyCost(costs, w, plan, relays);
    expect(bill.objectRequests).toBeCloseTo(MONTH * (plan.publishesPerSecond + plan.shards * plan.deliveriesPerSecond), -3);
    // Coalescing shards are busy back to back: each is billed for the whole month.
    expect(bill.gbSeconds).toBeGreaterThanOrEqual(plan.shards * PRICES.doMemoryGb * MONTH);
  });

  it("bills an object only while it is active: a quiet channel costs a small share of the month", () => {
    const w = workload({ channels: 1000, eventsPerSecond: 0.01 });
    const relays = planRelays(costs, w);
    const bill = monthlyCost(costs, w, planChannel(costs, w, relays), relays);
    expect(bill.gbSeconds).toBeLessThan(1000 * PRICES.doMemoryGb * MONTH * 0.001);
  });
});
