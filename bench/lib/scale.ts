/**
 * The capacity model of docs/scale.md: what a deployment needs and costs, from per-hop costs
 * (measured by bench/scale-model.ts) and Cloudflare's published limits and prices. Pure
 * functions, no I/O: test/bench/scale.test.ts checks them.
 *
 * The fan-out tree: one root object per channel stores and sequences each publish (one ingest
 * request, or part of one), then sends one RPC per shard; each shard sends one frame per socket.
 * Every object is a single-threaded FIFO server. An unsharded channel is a root with its sockets
 * and no shards.
 */

/** Per-hop costs, in the units they are measured in. */
export interface Costs {
  /** One ingest request carrying one event, Worker and channel object together (no sockets). */
  ingestMs: number;
  /** What each further event of the same request adds (the batch's marginal cost). */
  perEventMs: number;
  /** One WebSocket send (one frame to one socket) inside an object. */
  sendUs: number;
  /** What one shard adds to a publish: the RPC issued by the root and handled by the shard. */
  rpcMs: number;
  /** Network time of one root-to-shard RPC (0 locally; shards placed in other locations add it). */
  networkMs: number;
  /** Events one relay ships per second (its drain rate). */
  relayEventsPerSecond: number;
  /** What the capture trigger costs a writer per row. */
  triggerUs: number;
}

/** Cloudflare's published limits (docs/scale.md cites each), and this system's own. */
export const LIMITS = {
  socketsPerObject: 32_768,
  requestsPerSecondPerObject: 1_000, // a soft limit: past it, requests queue, then fail "overloaded"
  subrequestsPerInvocation: 10_000, // Workers Paid
  maxShards: 256, // SHARDS accepts 2-256
  defaultSocketsPerChannel: 10_000, // MAX_SOCKETS_PER_CHANNEL default, applied per shard object
};

/** Cloudflare's published prices (Workers Paid), USD. */
export const PRICES = {
  doRequestsIncluded: 1_000_000,
  doPerMillionRequests: 0.15,
  doGbSecondsIncluded: 400_000,
  doPerMillionGbSeconds: 12.5,
  doMemoryGb: 0.128, // duration is billed at 128 MB per active object
  wsIncomingPerRequest: 20, // 20 incoming WebSocket messages bill as one request
  workerRequestsIncluded: 10_000_000,
  workerPerMillionRequests: 0.3,
  workerCpuMsIncluded: 30_000_000,
  workerPerMillionCpuMs: 0.02,
  monthlyMinimum: 5,
};

const SECONDS_PER_MONTH = 30 * 24 * 3600;

/** A workload: channels alike, each with its subscribers and publish rate. */
export interface Workload {
  label: string;
  channels: number;
  subscribersPerChannel: number;
  /** Publishes (ingest deliveries, one frame per socket each) per second, per channel. */
  publishesPerSecond: number;
  /** Events per publish (a relay batch groups a channel's events into one publish). */
  eventsPerPublish: number;
  /** Socket (re)connections per subscriber per day: each is a Worker request and an object request. */
  connectsPerSubscriberPerDay: number;
}

/** How busy an object may be kept (utilization), so queues stay short. */
export const TARGET_UTILIZATION = 0.5;

/** The tree one channel of a workload needs, and what each object of it does. */
export interface ChannelPlan {
  shards: number;
  socketsPerShard: number;
  /** Busy time per publish, ms. */
  rootServiceMs: number;
  shardServiceMs: number;
  rootUtilization: number;
  shardUtilization: number;
  /** Requests per second each object receives (the soft limit is 1,000). */
  rootRequestsPerSecond: number;
  shardRequestsPerSecond: number;
  /** Subrequests one ingest invocation makes at the root (one RPC per shard). */
  rootSubrequests: number;
  /** Publish to the last socket's frame, no queueing, shards in parallel (ms). */
  unloadedLatencyMs: number;
  /** What does not fit, in words; empty when the plan holds. */
  problems: string[];
}

/** Sockets one shard can serve at `publishesPerSecond` while staying under TARGET_UTILIZATION. */
export function socketsPerShardAt(costs: Costs, publishesPerSecond: number): number {
  const budgetMs = TARGET_UTILIZATION / publishesPerSecond * 1000 - costs.rpcMs;
  return Math.max(0, Math.floor((budgetMs * 1000) / costs.sendUs));
}

/** Plans one channel of `w`: unsharded if one object can hold it, else the fewest shards that can. */
export function planChannel(costs: Costs, w: Workload): ChannelPlan {
  const publishMs = costs.ingestMs + (w.eventsPerPublish - 1) * costs.perEventMs;
  const sendMs = costs.sendUs / 1000;
  const perObject = Math.min(LIMITS.socketsPerObject, LIMITS.defaultSocketsPerChannel, socketsPerShardAt(costs, w.publishesPerSecond));
  const problems: string[] = [];
  const unshardedMs = publishMs + w.subscribersPerChannel * sendMs;
  let shards = 0;
  if (w.subscribersPerChannel > Math.min(LIMITS.socketsPerObject, LIMITS.defaultSocketsPerChannel) || (unshardedMs * w.publishesPerSecond) / 1000 > TARGET_UTILIZATION) {
    shards = perObject > 0 ? Math.max(2, Math.ceil(w.subscribersPerChannel / perObject)) : Infinity;
  }
  if (!Number.isFinite(shards)) {
    problems.push(`at ${w.publishesPerSecond} publishes/s a shard's RPC alone uses its time budget`);
    shards = LIMITS.maxShards;
  }
  if (shards > LIMITS.maxShards) problems.push(`needs ${shards} shards; SHARDS allows ${LIMITS.maxShards} (a second tree level would be needed)`);
  const socketsPerShard = shards > 0 ? Math.ceil(w.subscribersPerChannel / shards) : 0;
  const rootServiceMs = shards > 0 ? publishMs + shards * costs.rpcMs * ROOT_SHARE_OF_RPC : unshardedMs;
  const shardServiceMs = shards > 0 ? costs.rpcMs * (1 - ROOT_SHARE_OF_RPC) + socketsPerShard * sendMs : 0;
  const rootUtilization = rootServiceMs * w.publishesPerSecond / 1000;
  const shardUtilization = shardServiceMs * w.publishesPerSecond / 1000;
  if (rootUtilization > 1) problems.push(`root busy ${(rootUtilization * 100).toFixed(0)}% of the time: it cannot keep up`);
  if (shardUtilization > 1) problems.push(`shards busy ${(shardUtilization * 100).toFixed(0)}% of the time: they cannot keep up`);
  const rootRequestsPerSecond = w.publishesPerSecond;
  if (rootRequestsPerSecond > LIMITS.requestsPerSecondPerObject) problems.push(`root receives ${rootRequestsPerSecond} requests/s, past the soft limit of ${LIMITS.requestsPerSecondPerObject}`);
  if (shards > LIMITS.subrequestsPerInvocation) problems.push(`${shards} RPCs per ingest invocation, past ${LIMITS.subrequestsPerInvocation} subrequests`);
  return {
    shards,
    socketsPerShard,
    rootServiceMs,
    shardServiceMs,
    rootUtilization,
    shardUtilization,
    rootRequestsPerSecond,
    shardRequestsPerSecond: shards > 0 ? w.publishesPerSecond : 0,
    rootSubrequests: shards,
    unloadedLatencyMs: shards > 0 ? rootServiceMs + costs.networkMs + shardServiceMs : rootServiceMs,
    problems,
  };
}

/**
 * Of a shard RPC's measured cost, the share the root pays (issuing it) rather than the shard
 * (handling it). Measured locally only as a sum; the model splits it evenly.
 */
export const ROOT_SHARE_OF_RPC = 0.5;

/** What a workload costs per month at Cloudflare's prices (USD), and the counts behind it. */
export interface MonthlyCost {
  workerRequests: number;
  workerCpuMs: number;
  objectRequests: number;
  gbSeconds: number;
  usd: number;
}

/** Events per ingest request when the relay is busy (its --batch-size default). */
export const RELAY_BATCH = 1000;

/** How much of its measured drain rate a relay partition is planned to use. */
export const RELAY_HEADROOM = 0.7;

export function monthlyCost(costs: Costs, w: Workload, plan: ChannelPlan): MonthlyCost {
  const connectsPerSecond = (w.channels * w.subscribersPerChannel * w.connectsPerSubscriberPerDay) / 86_400;
  const publishesPerSecond = w.channels * w.publishesPerSecond;
  // A busy relay's request carries up to RELAY_BATCH events of many channels; an idle one sends
  // each publish on its own.
  const ingestRequestsPerSecond = Math.min(publishesPerSecond, Math.max(1, (publishesPerSecond * w.eventsPerPublish) / RELAY_BATCH));
  const workerRequests = (ingestRequestsPerSecond + connectsPerSecond) * SECONDS_PER_MONTH;
  // Object requests: one per channel per publish at the root, one RPC per shard, one per connect.
  const objectRequests = (publishesPerSecond * (1 + plan.shards) + connectsPerSecond) * SECONDS_PER_MONTH;
  // Duration: objects hibernate between publishes, so only busy time is billed.
  const busySecondsPerSecond = (publishesPerSecond * (plan.rootServiceMs + plan.shards * plan.shardServiceMs)) / 1000;
  const gbSeconds = busySecondsPerSecond * PRICES.doMemoryGb * SECONDS_PER_MONTH;
  // Worker CPU: bounded by the whole measured ingest cost (which includes the object's share).
  const eventsPerRequest = (publishesPerSecond * w.eventsPerPublish) / ingestRequestsPerSecond;
  const workerCpuMs = ingestRequestsPerSecond * (costs.ingestMs + (eventsPerRequest - 1) * costs.perEventMs) * SECONDS_PER_MONTH;
  const usd =
    PRICES.monthlyMinimum +
    (Math.max(0, workerRequests - PRICES.workerRequestsIncluded) / 1e6) * PRICES.workerPerMillionRequests +
    (Math.max(0, workerCpuMs - PRICES.workerCpuMsIncluded) / 1e6) * PRICES.workerPerMillionCpuMs +
    (Math.max(0, objectRequests - PRICES.doRequestsIncluded) / 1e6) * PRICES.doPerMillionRequests +
    (Math.max(0, gbSeconds - PRICES.doGbSecondsIncluded) / 1e6) * PRICES.doPerMillionGbSeconds;
  return { workerRequests, workerCpuMs, objectRequests, gbSeconds, usd };
}

/** Relay partitions and Postgres capture cost for `eventsPerSecond` written events. */
export function planRelays(costs: Costs, eventsPerSecond: number): { partitions: number; triggerCores: number } {
  return {
    partitions: Math.max(1, Math.ceil(eventsPerSecond / (costs.relayEventsPerSecond * RELAY_HEADROOM))),
    triggerCores: (eventsPerSecond * costs.triggerUs) / 1e6,
  };
}

/** Latency percentiles (ms) of a simulated run, and whether the queues stayed bounded. */
export interface Simulated {
  publishes: number;
  p50: number;
  p99: number;
  max: number;
  /** The backlog (publishes not yet at every socket) when the run ended. */
  backlogAtEnd: number;
  stable: boolean;
}

/** A small deterministic PRNG (mulberry32), so a simulation is repeatable. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Simulates one channel's fan-out tree: publishes arrive as a Poisson stream; the root, then each
 * shard, serves them one at a time in arrival order (an object is single-threaded); a shard's
 * share of sockets comes from random placement (the Worker picks a random shard per socket), so
 * the busiest shard sets the tail. The latency of a publish is from its arrival at the root to the
 * frame sent to the last socket.
 */
export function simulate(costs: Costs, w: Workload, plan: ChannelPlan, seconds: number, seed = 1): Simulated {
  const random = prng(seed);
  const sendMs = costs.sendUs / 1000;
  // Random placement: each socket picks a shard; count per shard.
  const perShard = new Array<number>(plan.shards).fill(0);
  if (plan.shards > 0) {
    // Normal approximation of the multinomial, for millions of sockets.
    const mean = w.subscribersPerChannel / plan.shards;
    for (let i = 0; i < plan.shards; i++) {
      const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
      perShard[i] = Math.max(0, Math.round(mean + z * Math.sqrt(mean * (1 - 1 / plan.shards))));
    }
  }
  const shardService = perShard.map((s) => costs.rpcMs * (1 - ROOT_SHARE_OF_RPC) + s * sendMs);
  const shardFree = new Array<number>(plan.shards).fill(0);
  let rootFree = 0;
  let t = 0;
  const latencies: number[] = [];
  const end = seconds * 1000;
  let lastDone = 0;
  for (;;) {
    t += (-Math.log(1 - random()) / w.publishesPerSecond) * 1000;
    if (t > end) break;
    const rootDone = Math.max(t, rootFree) + plan.rootServiceMs;
    rootFree = rootDone;
    let done = rootDone;
    for (let i = 0; i < plan.shards; i++) {
      const finish = Math.max(rootDone + costs.networkMs, shardFree[i]!) + shardService[i]!;
      shardFree[i] = finish;
      if (finish > done) done = finish;
    }
    latencies.push(done - t);
    lastDone = Math.max(lastDone, done);
  }
  latencies.sort((a, b) => a - b);
  const at = (p: number) => latencies[Math.min(latencies.length - 1, Math.max(0, Math.ceil((p / 100) * latencies.length) - 1))] ?? NaN;
  const backlogMs = Math.max(0, lastDone - end);
  // Stable: the work left at the end is a few publishes' worth, not a queue growing with time.
  const stable = plan.rootUtilization < 1 && Math.max(0, ...shardService.map((s) => (s * w.publishesPerSecond) / 1000)) < 1;
  return { publishes: latencies.length, p50: at(50), p99: at(99), max: at(100), backlogAtEnd: Math.round((backlogMs / 1000) * w.publishesPerSecond), stable };
}
