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
  type DeployStorm,
  deployStorm,
  LIMITS,
  monthlyCost,
  PARTYSOCKET,
  PRICES,
  planChannel,
  planRelays,
  type ResumeCosts,
  shardLoad,
  simulate,
  simulateStorm,
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

describe("deployStorm", () => {
  const resume: ResumeCosts = { acceptMs: 2.5, syncMs: 0.5, coalesced: false, socketsPerSync: 1 };
  const storm = (s: Partial<DeployStorm>): DeployStorm => ({
    label: "t",
    sockets: 10_000,
    channels: 1,
    shards: 0,
    jitterMs: 5000,
    reconnectDelayMs: PARTYSOCKET.minReconnectionDelayMs,
    connectionTimeoutMs: PARTYSOCKET.connectionTimeoutMs,
    ...s,
  });

  it("serves a deploy spread over many channels as it arrives: the last socket is back when the window ends", () => {
    const plan = deployStorm(resume, storm({ channels: 50 }));
    expect(plan.socketsPerChannel).toBe(200);
    expect(plan.rootRequestsPerSecond).toBeCloseTo(40); // 200 sockets over 5 s
    expect(plan.channelResumesPerSecond).toBeCloseTo(400); // 1 / 2.5 ms
    expect(plan.maxWaitMs).toBe(0);
    expect(plan.allResumedMs).toBeCloseTo(3000 + 5000 + 2.5);
    expect(plan.workerRequestsPerSecond).toBeCloseTo(2000);
    expect(plan.problems).toEqual([]);
  });

  it("queues at a sharded channel's root, which every resume passes through, and says what window avoids it", () => {
    const plan = deployStorm(resume, storm({ shards: 4 }));
    // The root's syncs: 10,000 over 5 s = 2,000/s, served at most 1,000/s (the requests/s limit,
    // though 0.5 ms each would allow 2,000/s); each shard's 500/s is within its 400/s x 4 together.
    expect(plan.rootRequestsPerSecond).toBeCloseTo(2000);
    expect(plan.shardRequestsPerSecond).toBeCloseTo(500);
    expect(plan.bottleneck).toBe("root");
    expect(plan.channelResumesPerSecond).toBe(LIMITS.requestsPerSecondPerObject);
    expect(plan.allResumedMs).toBeCloseTo(3000 + 10_000 + 3);
    expect(plan.maxWaitMs).toBeCloseTo(5000);
    expect(plan.queueFreeJitterMs).toBeCloseTo(10_000);
    expect(plan.problems.join("; ")).toMatch(/soft limit of 1,000/);
    expect(plan.problems.join("; ")).toMatch(/past partysocket's 4 s connection timeout.*10 s or more/);
    // With that window, nothing queues and nothing is over a limit.
    const wide = deployStorm(resume, storm({ shards: 4, jitterMs: plan.queueFreeJitterMs }));
    expect(wide.maxWaitMs).toBe(0);
    expect(wide.allResumedMs).toBeCloseTo(3000 + 10_000 + 3);
    expect(wide.problems).toEqual([]);
  });

  it("counts a sharded root's requests as the shards' coalesced syncs, several sockets each", () => {
    const cheap: ResumeCosts = { acceptMs: 1.5, syncMs: 0.25, coalesced: true, socketsPerSync: 8 };
    const plan = deployStorm(cheap, storm({ shards: 4 }));
    // 2,000 sockets/s reach the shards (4 x 667/s serve them as they come); 250 sync calls/s reach
    // the root, within its limit, which serves 4,000 sockets/s of its own time.
    expect(plan.rootRequestsPerSecond).toBeCloseTo(250);
    expect(plan.channelResumesPerSecond).toBeCloseTo(4000 / 1.5);
    expect(plan.bottleneck).toBe("shards");
    expect(plan.maxWaitMs).toBe(0);
    expect(plan.problems).toEqual([]);
    expect(simulateStorm(cheap, storm({ shards: 4 }), 3).allResumedMs).toBeLessThan(plan.allResumedMs * 1.05);
    // One call per socket: 2,000 requests/s at the root, which takes 1,000 a second; a queue of 5 s.
    const uncoalesced = deployStorm({ ...cheap, coalesced: false }, storm({ shards: 4 }));
    expect(uncoalesced.bottleneck).toBe("root");
    expect(uncoalesced.channelResumesPerSecond).toBe(LIMITS.requestsPerSecondPerObject);
    expect(uncoalesced.maxWaitMs).toBeCloseTo(5000);
    expect(uncoalesced.problems.join("; ")).toMatch(/each root receives 2,000 requests\/s/);
    // Coalesced, a storm the root cannot keep up with makes each call carry more: its calls stay
    // within its limit, and its time per socket sets the pace.
    const huge = deployStorm(cheap, storm({ sockets: 100_000, shards: 16 }));
    expect(huge.rootRequestsPerSecond).toBe(LIMITS.requestsPerSecondPerObject);
    expect(huge.problems.join("; ")).not.toMatch(/each root receives/);
    expect(huge.bottleneck).toBe("root"); // 4,000 sockets/s at 0.25 ms, below 16 shards x 667/s
    expect(huge.allResumedMs).toBeCloseTo(3000 + 25_000 + 1.75);
  });

  it("finds the shards the bottleneck when accepting costs more than the root's syncs", () => {
    const plan = deployStorm({ acceptMs: 10, syncMs: 0.5, coalesced: false, socketsPerSync: 1 }, storm({ sockets: 2000, shards: 2 }));
    expect(plan.bottleneck).toBe("shards");
    expect(plan.channelResumesPerSecond).toBeCloseTo(200); // 2 shards x 100/s
    expect(plan.allResumedMs).toBeCloseTo(3000 + 10_000 + 10.5);
  });

  it("without jitter, every socket of an object arrives at once and the last waits for all the others", () => {
    const plan = deployStorm(resume, storm({ sockets: 1000, jitterMs: 0 }));
    expect(plan.rootRequestsPerSecond).toBe(Infinity);
    expect(plan.maxWaitMs).toBeCloseTo(2500); // 1,000 x 2.5 ms
    expect(plan.allResumedMs).toBeCloseTo(3000 + 2500 + 2.5);
  });

  it("a wider window never lengthens a socket's wait, and ends the queue at n / rate", () => {
    let previous = Infinity;
    for (const jitterMs of [0, 1000, 2000, 5000, 10_000, 20_000]) {
      const plan = deployStorm(resume, storm({ sockets: 4000, jitterMs }));
      expect(plan.maxWaitMs).toBeLessThanOrEqual(previous);
      previous = plan.maxWaitMs;
      if (jitterMs >= 10_000) expect(plan.maxWaitMs).toBe(0); // 4,000 at 400/s
    }
  });

  it("says when one object would hold more sockets than MAX_SOCKETS_PER_CHANNEL allows", () => {
    expect(deployStorm(resume, storm({ sockets: 20_000, jitterMs: 60_000 })).problems.join("; ")).toMatch(/MAX_SOCKETS_PER_CHANNEL/);
  });

  it("agrees with a socket-by-socket simulation of the same channel", () => {
    for (const s of [
      storm({ channels: 50 }),
      storm({ sockets: 3000, jitterMs: 2000 }),
      storm({ shards: 4 }),
      storm({ shards: 4, jitterMs: 20_000 }),
      storm({ sockets: 4000, shards: 2, jitterMs: 3000 }),
    ]) {
      const plan = deployStorm(resume, s);
      const sim = simulateStorm(resume, s, 11);
      expect(sim.allResumedMs).toBeGreaterThan(plan.allResumedMs * 0.95);
      expect(sim.allResumedMs).toBeLessThan(plan.allResumedMs * 1.05);
      // Arrivals at random come in bursts the fluid model smooths out: a wait of a few services more.
      expect(Math.abs(sim.maxWaitMs - plan.maxWaitMs)).toBeLessThan(plan.maxWaitMs * 0.1 + 200);
    }
  });
});
