/**
 * The capacity model of docs/scale.md: what a deployment needs and costs, from per-hop costs
 * (measured by bench/scale-model.ts) and Cloudflare's published limits and prices. Pure
 * functions, no I/O: test/bench/scale.test.ts checks them.
 *
 * The path of an event: the relay partition that owns its channel ships it in its next batch
 * (one ingest request carries every channel's events of that batch); the Worker hands each
 * channel its share (one publish per channel per request); the channel's root object stores and
 * sequences it, sends it to its own sockets (unsharded) or queues it for every shard; each shard
 * gets one delivery at a time, and publishes that arrive while one is in flight are coalesced
 * into the next (worker/channel.ts), so a shard's sockets get one frame for all of them. Every
 * object is a single-threaded server.
 */

/** Per-hop costs, in the units they are measured in. */
export interface Costs {
  /** Round trip of one ingest request carrying one event (relay to Worker to object and back). */
  ingestMs: number;
  /** What each further event of the same channel in one request adds. */
  perEventMs: number;
  /** What each further channel in one request adds: one more publish at a root object. */
  perChannelMs: number;
  /** One WebSocket send (one frame to one socket) inside an object. */
  sendUs: number;
  /** What each further event in that frame adds to the send. */
  sendPerEventUs: number;
  /** One root-to-shard delivery: the RPC, issued by the root and handled by the shard (sends aside). */
  rpcMs: number;
  /** The root's share of `rpcMs`: its time to issue one RPC (the shard's share is the rest). */
  rpcRootMs: number;
  /** Network time of one root-to-shard RPC (0 locally; shards placed in other locations add it). */
  networkMs: number;
  /** Events one relay partition ships per second, in full batches (its drain rate). */
  relayEventsPerSecond: number;
  /** What capture costs a writer per row (Postgres CPU: the trigger and the outbox row it writes). */
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
  workerRequestsIncluded: 10_000_000,
  workerPerMillionRequests: 0.3,
  workerCpuMsIncluded: 30_000_000,
  workerPerMillionCpuMs: 0.02,
  monthlyMinimum: 5,
};

const SECONDS_PER_MONTH = 30 * 24 * 3600;

/** A workload: channels alike, each with its subscribers and event rate. */
export interface Workload {
  label: string;
  channels: number;
  subscribersPerChannel: number;
  /** Events written per second, per channel. */
  eventsPerSecond: number;
  /** Socket (re)connections per subscriber per day: each is a Worker request and an object request. */
  connectsPerSubscriberPerDay: number;
}

/** Events per ingest request when the relay is busy (its --batch-size default). */
export const RELAY_BATCH = 1000;
/** How much of its measured drain rate a relay partition is planned to use. */
export const RELAY_HEADROOM = 0.7;
/** How busy an object may be kept (utilization), so queues stay short. */
export const TARGET_UTILIZATION = 0.5;
/** The longest a shard's delivery (its sends to all its sockets) is planned to take. */
export const DELIVERY_BUDGET_MS = 250;

/** How the relay partitions ship a workload's events. */
export interface RelayPlan {
  partitions: number;
  /** Round trip of one batch at this load (fixed cost plus each event's), ms. */
  batchIntervalMs: number;
  /** Ingest requests per second, all partitions together. */
  requestsPerSecond: number;
  eventsPerRequest: number;
  /** Writer CPU the capture trigger takes, in cores. */
  triggerCores: number;
  /** One channel's events all go through one partition (order): its ceiling, events/s. */
  perChannelCeiling: number;
}

/**
 * Partitions for `w`'s events, and how they batch. A batch's round trip grows with its size
 * (T = ingestMs + b x c, where c is a full batch's time per event beyond the fixed cost); while one
 * batch is in flight the next collects, so at load L a batch holds b = L x T events, giving
 * T = ingestMs / (1 - L x c).
 */
export function planRelays(costs: Costs, w: Workload): RelayPlan {
  const total = w.channels * w.eventsPerSecond;
  const capacity = costs.relayEventsPerSecond * RELAY_HEADROOM;
  // Partitions split channels, never one channel: one channel's events keep one partition's order.
  const partitions = Math.max(1, Math.min(w.channels, Math.ceil(total / capacity)));
  const perEventMs = Math.max(0, (RELAY_BATCH * 1000) / costs.relayEventsPerSecond - costs.ingestMs) / RELAY_BATCH;
  const load = Math.min(total / partitions, costs.relayEventsPerSecond) / 1000; // events per ms, per partition
  const busy = Math.min(0.99, load * perEventMs);
  const batchIntervalMs = costs.ingestMs / (1 - busy);
  // A quiet partition sends each event on its own; a loaded one a request per round trip.
  const perPartition = Math.min(load * 1000, 1000 / batchIntervalMs);
  const requestsPerSecond = perPartition * partitions;
  return {
    partitions,
    batchIntervalMs,
    requestsPerSecond,
    eventsPerRequest: (load * 1000 * partitions) / requestsPerSecond,
    triggerCores: (total * costs.triggerUs) / 1e6,
    perChannelCeiling: costs.relayEventsPerSecond,
  };
}

/** Publishes per second a channel receives (one per request carrying any of its events), and events in each. */
export function channelPublishes(w: Workload, relays: RelayPlan): { publishesPerSecond: number; eventsPerPublish: number } {
  // A partition's batch windows come one per round trip; Poisson arrivals: the chance a window
  // holds at least one of this channel's events. (A quiet partition's windows are mostly empty:
  // each event then goes on its own, one publish each.)
  const windows = 1000 / relays.batchIntervalMs;
  const r = Math.min(w.eventsPerSecond, relays.perChannelCeiling);
  const publishesPerSecond = Number.isFinite(windows) ? windows * (1 - Math.exp(-r / windows)) : r;
  return { publishesPerSecond, eventsPerPublish: r / publishesPerSecond };
}

/** The tree one channel of a workload needs, and what each object of it does. */
export interface ChannelPlan {
  shards: number;
  socketsPerShard: number;
  publishesPerSecond: number;
  eventsPerPublish: number;
  /** The root's busy time per publish (store, and for an unsharded channel its sends), ms. */
  rootPublishMs: number;
  /** The root's share of one shard delivery, ms. */
  rootRpcMs: number;
  /** A shard's delivery of one publish (RPC and sends), ms. */
  deliveryMs: number;
  /** Deliveries per second each shard receives (publishes coalesce once a shard is busy). */
  deliveriesPerSecond: number;
  /** Events per delivery. */
  eventsPerDelivery: number;
  rootUtilization: number;
  /** Share of time a shard is busy (1 when it is coalescing: back to back, yet keeping up). */
  shardUtilization: number;
  /** Whether every object keeps up (the queues stay bounded). */
  stable: boolean;
  /** Requests per second the root receives (the soft limit is 1,000). */
  rootRequestsPerSecond: number;
  /** Publish to the last socket's frame, no queueing, shards in parallel (ms). */
  unloadedLatencyMs: number;
  /** What does not fit, in words; empty when the plan holds. */
  problems: string[];
}

interface ShardLoad {
  deliveryMs: number;
  deliveriesPerSecond: number;
  eventsPerDelivery: number;
  utilization: number;
  stable: boolean;
}

/** One shard of `sockets` under `publishesPerSecond` publishes of `events` events each, coalescing when busy. */
export function shardLoad(costs: Costs, sockets: number, publishesPerSecond: number, events: number): ShardLoad {
  const fixed = shardRpcMs(costs) + (sockets * costs.sendUs) / 1000; // ms per delivery
  const perEvent = (sockets * costs.sendPerEventUs) / 1000; // ms per further event in it
  const single = fixed + (events - 1) * perEvent;
  if ((publishesPerSecond * single) / 1000 <= 1) {
    return {
      deliveryMs: single,
      deliveriesPerSecond: publishesPerSecond,
      eventsPerDelivery: events,
      utilization: (publishesPerSecond * single) / 1000,
      stable: true,
    };
  }
  // Back to back: each delivery carries what arrived during the previous one, k = rate x D, and
  // D = fixed + (k - 1) x perEvent, so D = (fixed - perEvent) / (1 - rate x perEvent).
  const rate = (publishesPerSecond * events) / 1000; // events per ms
  if (rate * perEvent >= 1) return { deliveryMs: Infinity, deliveriesPerSecond: 0, eventsPerDelivery: Infinity, utilization: rate * perEvent, stable: false };
  const d = Math.max(single, (fixed - perEvent) / (1 - rate * perEvent));
  return { deliveryMs: d, deliveriesPerSecond: 1000 / d, eventsPerDelivery: rate * d, utilization: 1, stable: true };
}

/** Plans one channel of `w`: unsharded if one object can hold it, else the fewest shards whose deliveries fit DELIVERY_BUDGET_MS. */
export function planChannel(costs: Costs, w: Workload, relays = planRelays(costs, w)): ChannelPlan {
  const { publishesPerSecond, eventsPerPublish } = channelPublishes(w, relays);
  const n = w.subscribersPerChannel;
  const storeMs = costs.perChannelMs + (eventsPerPublish - 1) * costs.perEventMs;
  const sendMs = (sockets: number) => (sockets * (costs.sendUs + (eventsPerPublish - 1) * costs.sendPerEventUs)) / 1000;
  const cap = Math.min(LIMITS.socketsPerObject, LIMITS.defaultSocketsPerChannel);
  const problems: string[] = [];
  const rootRpcMs = Math.min(costs.rpcRootMs, costs.rpcMs);
  const unshardedUtil = (publishesPerSecond * (storeMs + sendMs(n))) / 1000;
  const rootOf = (shards: number, load: ShardLoad) => (publishesPerSecond * storeMs + shards * load.deliveriesPerSecond * rootRpcMs) / 1000;

  let shards = 0;
  let load: ShardLoad = { deliveryMs: 0, deliveriesPerSecond: 0, eventsPerDelivery: 0, utilization: 0, stable: true };
  if (n > cap || unshardedUtil > TARGET_UTILIZATION) {
    // The fewest shards whose delivery fits the budget while the root stays under its target;
    // failing that, the tree with the quickest deliveries among those that keep up.
    const least = Math.max(2, Math.ceil(n / cap));
    if (least > LIMITS.maxShards) {
      shards = least;
      problems.push(`needs ${least} shards of ${cap} sockets; SHARDS allows ${LIMITS.maxShards} (a second tree level would be needed)`);
    } else {
      let best: { s: number; ms: number } | null = null;
      for (let s = least; s <= LIMITS.maxShards; s++) {
        const l = shardLoad(costs, Math.ceil(n / s), publishesPerSecond, eventsPerPublish);
        const root = rootOf(s, l);
        if (l.stable && l.deliveryMs <= DELIVERY_BUDGET_MS && root <= TARGET_UTILIZATION) {
          best = { s, ms: l.deliveryMs };
          break;
        }
        if (l.stable && root < 0.8 && (!best || l.deliveryMs < best.ms)) best = { s, ms: l.deliveryMs };
      }
      shards = best?.s ?? least;
      if (best && best.ms > DELIVERY_BUDGET_MS) {
        problems.push(
          `a shard's delivery takes ${Math.round(best.ms)} ms, over the ${DELIVERY_BUDGET_MS} ms budget: more shards would cost the root more RPCs than it can issue (cheaper sends or RPCs, or a second tree level, would bring it down)`,
        );
      }
    }
    load = shardLoad(costs, Math.ceil(n / shards), publishesPerSecond, eventsPerPublish);
  }
  const socketsPerShard = shards > 0 ? Math.ceil(n / shards) : 0;
  const rootUtilization = shards > 0 ? rootOf(shards, load) : unshardedUtil;
  const rootPublishMs = shards > 0 ? storeMs : storeMs + sendMs(n);
  // Past one partition's drain rate, the channel's backlog grows at the relay, whatever the tree.
  const stable = rootUtilization < 1 && load.stable && w.eventsPerSecond <= relays.perChannelCeiling;
  if (rootUtilization >= 1) problems.push(`root busy ${(rootUtilization * 100).toFixed(0)}% of the time: it cannot keep up`);
  else if (rootUtilization > TARGET_UTILIZATION)
    problems.push(
      `root busy ${(rootUtilization * 100).toFixed(0)}% of the time, over the ${TARGET_UTILIZATION * 100}% target: it keeps up, with a longer tail`,
    );
  if (!load.stable) problems.push("each shard's sends grow faster than it can coalesce: it cannot keep up");
  if (publishesPerSecond > LIMITS.requestsPerSecondPerObject)
    problems.push(`root receives ${Math.round(publishesPerSecond)} requests/s, past the soft limit of ${LIMITS.requestsPerSecondPerObject}`);
  if (w.eventsPerSecond > relays.perChannelCeiling)
    problems.push(`one channel's events go through one relay partition: at most ${Math.round(relays.perChannelCeiling)} events/s`);
  if (shards > LIMITS.subrequestsPerInvocation) problems.push(`${shards} RPCs per publish, past ${LIMITS.subrequestsPerInvocation} subrequests`);
  const single = shards > 0 ? shardLoad(costs, socketsPerShard, 0, eventsPerPublish).deliveryMs : 0;
  return {
    shards,
    socketsPerShard,
    publishesPerSecond,
    eventsPerPublish,
    rootPublishMs,
    rootRpcMs,
    deliveryMs: single,
    deliveriesPerSecond: load.deliveriesPerSecond,
    eventsPerDelivery: load.eventsPerDelivery,
    rootUtilization,
    shardUtilization: load.utilization,
    stable,
    rootRequestsPerSecond: publishesPerSecond,
    unloadedLatencyMs: relays.batchIntervalMs / 2 + workerHopMs(costs) + rootPublishMs + shards * rootRpcMs + (shards > 0 ? costs.networkMs + single : 0),
    problems,
  };
}

/** The shard's share of one delivery RPC. */
function shardRpcMs(costs: Costs): number {
  return Math.max(0, costs.rpcMs - costs.rpcRootMs);
}

/** The part of an ingest round trip outside the root object (relay to Worker, Worker to object). */
function workerHopMs(costs: Costs): number {
  return Math.max(0, costs.ingestMs - costs.perChannelMs);
}

/** What a workload costs per month at Cloudflare's prices (USD), and the counts behind it. */
export interface MonthlyCost {
  workerRequests: number;
  workerCpuMs: number;
  objectRequests: number;
  gbSeconds: number;
  usd: number;
}

/**
 * Requests: every ingest request and socket connect reaches the Worker; every publish (one per
 * channel per request), every shard delivery and every connect reaches an object. Duration: an
 * object is billed while it runs or waits on its own outgoing calls; idle with hibernatable
 * sockets it is not. `activeMs` is a root's wall time per publish (to its last shard's frame).
 */
export function monthlyCost(costs: Costs, w: Workload, plan: ChannelPlan, relays: RelayPlan, activeMs = plan.unloadedLatencyMs): MonthlyCost {
  const connectsPerSecond = (w.channels * w.subscribersPerChannel * w.connectsPerSubscriberPerDay) / 86_400;
  const workerRequests = (relays.requestsPerSecond + connectsPerSecond) * SECONDS_PER_MONTH;
  const objectRequestsPerSecond = w.channels * (plan.publishesPerSecond + plan.shards * plan.deliveriesPerSecond) + connectsPerSecond;
  const objectRequests = objectRequestsPerSecond * SECONDS_PER_MONTH;
  // Share of wall time each object is active: Poisson coverage of its busy periods.
  const covered = (ratePerSecond: number, ms: number) => 1 - Math.exp(-(ratePerSecond * ms) / 1000);
  const rootActive = covered(plan.publishesPerSecond, plan.shards > 0 ? activeMs : plan.rootPublishMs);
  const shardActive = plan.shards > 0 ? Math.min(1, plan.shardUtilization) : 0;
  const gbSeconds = w.channels * (rootActive + plan.shards * shardActive) * PRICES.doMemoryGb * SECONDS_PER_MONTH;
  // Worker CPU: bounded by the whole measured round trip of each request (an upper bound).
  const workerCpuMs = (relays.requestsPerSecond * costs.ingestMs + w.channels * w.eventsPerSecond * costs.perEventMs) * SECONDS_PER_MONTH;
  const usd =
    PRICES.monthlyMinimum +
    (Math.max(0, workerRequests - PRICES.workerRequestsIncluded) / 1e6) * PRICES.workerPerMillionRequests +
    (Math.max(0, workerCpuMs - PRICES.workerCpuMsIncluded) / 1e6) * PRICES.workerPerMillionCpuMs +
    (Math.max(0, objectRequests - PRICES.doRequestsIncluded) / 1e6) * PRICES.doPerMillionRequests +
    (Math.max(0, gbSeconds - PRICES.doGbSecondsIncluded) / 1e6) * PRICES.doPerMillionGbSeconds;
  return { workerRequests, workerCpuMs, objectRequests, gbSeconds, usd };
}

/** Latency percentiles (ms) of a simulated run, and whether the queues stayed bounded. */
export interface Simulated {
  publishes: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
  /** Shard deliveries per publish per shard (below 1 once publishes coalesce). */
  deliveriesPerPublish: number;
  /** Work (ms) still queued when the run ended, past the end of the run. */
  backlogMs: number;
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
 * Simulates one channel's tree, event by event: publishes arrive as a Poisson stream, each after
 * waiting for its relay batch (uniform over one batch interval) and the Worker hop; the root
 * serves them one at a time in arrival order; each shard has one delivery in flight and collects
 * the publishes that arrive meanwhile into the next, exactly as worker/channel.ts does. Sockets
 * are placed at random (the Worker picks a shard per socket), so the busiest shard sets the tail.
 * Latency: from the commit (the event's arrival at the relay) to the frame sent to the last socket.
 */
export function simulate(costs: Costs, w: Workload, plan: ChannelPlan, relays: RelayPlan, seconds: number, seed = 1): Simulated {
  const random = prng(seed);
  const perShard = new Array<number>(plan.shards).fill(0);
  if (plan.shards > 0) {
    // Normal approximation of the multinomial, for millions of sockets.
    const mean = w.subscribersPerChannel / plan.shards;
    for (let i = 0; i < plan.shards; i++) {
      const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
      perShard[i] = Math.max(0, Math.round(mean + z * Math.sqrt(mean * (1 - 1 / plan.shards))));
    }
  }
  const k = plan.eventsPerPublish;
  const delivery = (i: number, events: number) => shardRpcMs(costs) + (perShard[i]! * (costs.sendUs + (events - 1) * costs.sendPerEventUs)) / 1000;
  type Lane = { busyUntil: number; pending: { start: number; events: number; members: number[] } | null; deliveries: number };
  const lanes: Lane[] = perShard.map(() => ({ busyUntil: 0, pending: null, deliveries: 0 }));
  const arrivals: number[] = [];
  const done: number[] = [];
  const close = (i: number, lane: Lane) => {
    const p = lane.pending!;
    const end = p.start + delivery(i, p.events);
    for (const m of p.members) done[m] = Math.max(done[m]!, end);
    lane.busyUntil = end;
    lane.pending = null;
    lane.deliveries++;
  };
  let rootFree = 0;
  let t = 0;
  const end = seconds * 1000;
  const hop = workerHopMs(costs);
  for (let p = 0; ; p++) {
    t += (-Math.log(1 - random()) / plan.publishesPerSecond) * 1000;
    if (t > end) break;
    const atRoot = t + random() * relays.batchIntervalMs + hop;
    arrivals.push(t);
    // Root: store (and for an unsharded channel, send); then one RPC issue per delivery it opens.
    // The root issues the RPCs one after another (a delivery collecting behind a busy one is
    // charged here too, though the root issues it when the lane frees).
    let cursor = Math.max(atRoot, rootFree) + plan.rootPublishMs;
    done.push(cursor);
    for (let i = 0; i < plan.shards; i++) {
      const lane = lanes[i]!;
      const r = cursor + costs.networkMs;
      if (lane.pending && r >= lane.pending.start) close(i, lane);
      if (lane.pending) {
        lane.pending.events += k;
        lane.pending.members.push(p);
      } else {
        cursor += plan.rootRpcMs;
        lane.pending = { start: Math.max(r + plan.rootRpcMs, lane.busyUntil), events: k, members: [p] };
        if (r + plan.rootRpcMs >= lane.busyUntil) close(i, lane); // the lane was idle: it goes out now
      }
    }
    rootFree = cursor;
  }
  lanes.forEach((lane, i) => {
    if (lane.pending) close(i, lane);
  });
  const latencies = done.map((d, i) => d - arrivals[i]!).sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.max(0, Math.ceil((q / 100) * latencies.length) - 1))] ?? NaN;
  const last = done.reduce((a, b) => Math.max(a, b), 0);
  const deliveries = lanes.reduce((a, l) => a + l.deliveries, 0);
  return {
    publishes: latencies.length,
    p50: at(50),
    p99: at(99),
    max: at(100),
    mean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
    deliveriesPerPublish: plan.shards > 0 ? deliveries / plan.shards / Math.max(1, latencies.length) : 0,
    backlogMs: Math.max(0, last - end),
  };
}

// ---------------------------------------------------------------------------------------------
// Deploy day: a Worker deploy closes every socket of every object at once, and every client
// comes back with its `since` (client/: after partysocket's delay, plus a random share of
// reconnectJitterMs).

/** What one socket's resume keeps each object it passes through busy, ms (measured by test/faults/storm.test.ts). */
export interface ResumeCosts {
  /** The object that accepts the socket (an unsharded channel's root, or a shard): upgrade, welcome, replay or catch-up. */
  acceptMs: number;
  /** A sharded channel's root, for each socket joining one of its shards: its share of the shard's sync RPC (what the socket is owed). */
  syncMs: number;
  /**
   * A shard coalesces the joins that arrive while its last sync is under way (worker/coalesce.ts):
   * the root's calls then adapt to what it answers (a busier root answers more slowly, and each
   * call carries more), so they stay within its requests/s and only its time per socket bounds
   * it. Without (false: one call per socket, as before) each socket is a request.
   */
  coalesced: boolean;
  /** Sockets one sync call carried in the storm test (at its arrival rate): the root's calls per socket while it keeps up. */
  socketsPerSync: number;
}

/** partysocket's defaults that shape a deploy's reconnects (node_modules/partysocket, ws.ts). */
export const PARTYSOCKET = { minReconnectionDelayMs: 3000, connectionTimeoutMs: 4000 };
/** client/'s default reconnectJitterMs. */
export const DEFAULT_JITTER_MS = 5000;

/** A deploy: `sockets` spread evenly over `channels`, each channel over `shards` shard objects (0: its root holds them). */
export interface DeployStorm {
  label: string;
  sockets: number;
  channels: number;
  shards: number;
  /** reconnectJitterMs: each first reconnect waits a uniform share of it, after `reconnectDelayMs`. */
  jitterMs: number;
  /** partysocket's delay before its first reconnect (minReconnectionDelay). */
  reconnectDelayMs: number;
  /** partysocket's connectionTimeout: a socket whose upgrade waits longer gives up and connects again. */
  connectionTimeoutMs: number;
}

/** What a deploy does to the objects, and how long until every socket is back. */
export interface StormPlan {
  socketsPerChannel: number;
  socketsPerShard: number;
  /** Requests per second arriving at a channel's root while the window lasts (upgrades, or a sharded channel's coalesced syncs). */
  rootRequestsPerSecond: number;
  /** The same at each shard (0 when unsharded). */
  shardRequestsPerSecond: number;
  /** Resumes per second one channel serves: its slowest stage (one object's rate, at most the requests/s limit). */
  channelResumesPerSecond: number;
  /** Which object sets that pace. */
  bottleneck: "root" | "shards";
  /** From the cut until the last socket has resumed, ms. */
  allResumedMs: number;
  /** The longest a socket's upgrade waits for its turn at the bottleneck, ms. */
  maxWaitMs: number;
  /** The shortest window whose arrivals every object serves as they come (no queue). */
  queueFreeJitterMs: number;
  /** Requests per second at the Worker (stateless: Cloudflare runs as many instances as it takes). */
  workerRequestsPerSecond: number;
  problems: string[];
}

/** Resumes per second one object serves at `costMs` of busy time each, within the per-object requests/s limit (`perRequest` resumes to a request). */
function objectRate(costMs: number, perRequest = 1): number {
  return Math.min(costMs > 0 ? 1000 / costMs : Infinity, LIMITS.requestsPerSecondPerObject * perRequest);
}

/**
 * A deploy storm, as a fluid queue. The sockets of a channel arrive uniformly over the jitter
 * window W (after partysocket's delay D), at n / W per second. Each passes through the object that
 * accepts it and, on a sharded channel, through the root's sync; the channel serves them at its
 * slowest stage's rate mu (one object's 1 / cost, at most its requests/s limit). While n / W
 * stays under mu each is served as it arrives: the last is back at D + W. Past it a queue builds
 * through the window and drains after: the last is back at D + n / mu, having waited n / mu - W,
 * the longest wait of all. Channels are independent objects, served in parallel.
 */
export function deployStorm(costs: ResumeCosts, s: DeployStorm): StormPlan {
  const n = s.sockets / s.channels;
  const perShard = s.shards > 0 ? n / s.shards : 0;
  const windowS = s.jitterMs / 1000;
  const rate = (count: number) => (windowS > 0 ? count / windowS : Infinity);
  const acceptRate = objectRate(costs.acceptMs);
  const perSync = costs.coalesced ? Math.max(1, costs.socketsPerSync) : 1;
  const rootRate = s.shards === 0 ? acceptRate : costs.coalesced ? (costs.syncMs > 0 ? 1000 / costs.syncMs : Infinity) : objectRate(costs.syncMs);
  const shardsRate = s.shards > 0 ? s.shards * acceptRate : Infinity;
  const mu = Math.min(rootRate, shardsRate);
  const drainMs = (n / mu) * 1000;
  const serviceMs = costs.acceptMs + (s.shards > 0 ? costs.syncMs : 0);
  const maxWaitMs = Math.max(0, drainMs - s.jitterMs);
  const plan: StormPlan = {
    socketsPerChannel: n,
    socketsPerShard: perShard,
    rootRequestsPerSecond: s.shards > 0 && costs.coalesced ? Math.min(rate(n) / perSync, LIMITS.requestsPerSecondPerObject) : rate(n),
    shardRequestsPerSecond: s.shards > 0 ? rate(perShard) : 0,
    channelResumesPerSecond: mu,
    bottleneck: rootRate <= shardsRate ? "root" : "shards",
    allResumedMs: s.reconnectDelayMs + Math.max(s.jitterMs, drainMs) + serviceMs,
    maxWaitMs,
    queueFreeJitterMs: drainMs,
    workerRequestsPerSecond: rate(s.sockets),
    problems: [],
  };
  const limit = LIMITS.requestsPerSecondPerObject;
  const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
  if (plan.rootRequestsPerSecond > limit)
    plan.problems.push(
      `each root receives ${fmt(plan.rootRequestsPerSecond)} requests/s, past the soft limit of ${fmt(limit)} (they queue, then fail "overloaded")`,
    );
  if (plan.shardRequestsPerSecond > limit)
    plan.problems.push(`each shard receives ${fmt(plan.shardRequestsPerSecond)} requests/s, past the soft limit of ${fmt(limit)}`);
  if (maxWaitMs > s.connectionTimeoutMs)
    plan.problems.push(
      `upgrades wait up to ${(maxWaitMs / 1000).toFixed(1)} s at the ${plan.bottleneck}, past partysocket's ${s.connectionTimeoutMs / 1000} s connection timeout: those sockets give up and connect again, adding to the queue; a window of ${fmt(Math.ceil(drainMs / 1000))} s or more avoids it`,
    );
  const perObject = s.shards > 0 ? perShard : n;
  if (perObject > LIMITS.defaultSocketsPerChannel)
    plan.problems.push(`${fmt(perObject)} sockets per object, past MAX_SOCKETS_PER_CHANNEL's default of ${fmt(LIMITS.defaultSocketsPerChannel)}`);
  return plan;
}

/** One simulated deploy storm of a channel: when its last socket was back, and the longest wait. */
export interface SimulatedStorm {
  allResumedMs: number;
  maxWaitMs: number;
}

/**
 * One channel of `s` socket by socket, to check deployStorm's fluid arithmetic: arrivals uniform
 * over the window, each socket on a shard at random (as the Worker places them), served first
 * in order of arrival by its shard (or an unsharded root) for `acceptMs`, then, sharded, by the
 * root's sync for `syncMs` in order of the shards' requests, each object one at a time and at
 * most LIMITS.requestsPerSecondPerObject a second.
 */
export function simulateStorm(costs: ResumeCosts, s: DeployStorm, seed = 1): SimulatedStorm {
  const random = prng(seed);
  const n = Math.round(s.sockets / s.channels);
  const gap = (ms: number) => Math.max(ms, 1000 / LIMITS.requestsPerSecondPerObject);
  const arrivals = Array.from({ length: n }, () => s.reconnectDelayMs + random() * s.jitterMs).sort((a, b) => a - b);
  const free = new Array<number>(Math.max(1, s.shards)).fill(0);
  const accepted: { arrival: number; done: number }[] = [];
  for (const arrival of arrivals) {
    const i = s.shards > 0 ? Math.floor(random() * s.shards) : 0;
    const start = Math.max(arrival, free[i]!);
    free[i] = start + gap(costs.acceptMs);
    accepted.push({ arrival, done: start + costs.acceptMs });
  }
  let maxWaitMs = 0;
  let last = 0;
  if (s.shards === 0) {
    for (const a of accepted) {
      maxWaitMs = Math.max(maxWaitMs, a.done - costs.acceptMs - a.arrival);
      last = Math.max(last, a.done);
    }
    return { allResumedMs: last, maxWaitMs };
  }
  let root = 0;
  for (const a of accepted.sort((x, y) => x.done - y.done)) {
    const start = Math.max(a.done, root);
    root = start + (costs.coalesced ? costs.syncMs : Math.max(costs.syncMs, 1000 / LIMITS.requestsPerSecondPerObject));
    maxWaitMs = Math.max(maxWaitMs, start - a.arrival - costs.acceptMs);
    last = Math.max(last, start + costs.syncMs);
  }
  return { allResumedMs: last, maxWaitMs };
}

/** One shape of test/faults/storm.test.ts, as it writes bench/results/storm.json. */
export interface StormResult {
  label: string;
  sockets: number;
  channels: number;
  shards: number;
  jitterMs: number;
  /** The restart: from the first socket's close until the last had resumed; workerd's CPU per socket. */
  resume: { seconds: number; afterUpSeconds: number; cpuMsPerSocket: number; connections: number };
  /** The same sockets' first connection, arriving over the same window. */
  first: { seconds: number; cpuMsPerSocket: number; connections: number };
  /** workerd's CPU delivering the writes to every socket, with nothing else going on. */
  writesCpuMsPerSecond: number;
  /** A sharded channel's root after the restart: the shards' sync calls and the sockets they carried. */
  rootSyncs?: { calls: number; sockets: number };
}

/**
 * Resume costs from a storm run: an unsharded channel's resume is all the accepting object's (an
 * upper bound: workerd's CPU per resumed socket counts the Worker's routing and the writes'
 * delivery during the storm in); a sharded channel's costs the root what it costs more than that
 * (the sync RPC between shard and root).
 */
export function resumeCostsFrom(shapes: StormResult[]): ResumeCosts | null {
  const unsharded = shapes.find((s) => s.shards === 0);
  const sharded = shapes.find((s) => s.shards > 0);
  if (!unsharded || !sharded) return null;
  const acceptMs = unsharded.resume.cpuMsPerSocket;
  const syncs = sharded.rootSyncs;
  return {
    acceptMs,
    syncMs: Math.max(0.05, sharded.resume.cpuMsPerSocket - acceptMs),
    coalesced: true,
    socketsPerSync: syncs && syncs.calls > 0 ? syncs.sockets / syncs.calls : 1,
  };
}
