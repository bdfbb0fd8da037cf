/**
 * `npm run bench:scale`: measures this system's per-hop costs on this machine (a real Worker in
 * workerd, real sockets), checks the model against a sharded channel measured end to end, then
 * projects: what 1,000,000 concurrent subscribers and 100,000 events/s need and cost
 * (bench/lib/scale.ts is the model, docs/scale.md explains it).
 *
 *   npm run bench:scale                      measure, then project
 *   npm run bench:scale -- --costs=FILE      project from costs measured earlier (JSON)
 *   npm run bench:scale -- --send-us=5 ...   override any cost (ingest-ms, per-event-ms,
 *                                            per-channel-ms, send-us, send-per-event-us, rpc-ms,
 *                                            rpc-root-ms, network-ms, relay-events-per-second, trigger-us),
 *                                            e.g. with figures from production
 *
 * Then deploy day: how long until every socket is back after a deploy, and what each object
 * receives meanwhile, from the resume costs test/faults/storm.test.ts measured
 * (bench/results/storm.json; --resume-accept-ms, --resume-sync-ms and --sockets-per-sync override them;
 * --uncoalesced projects one sync call per socket, as shards made them before coalescing).
 */
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { SIGNATURE_HEADER, signBody } from "../protocol/index.ts";
import {
  type Costs,
  DEFAULT_JITTER_MS,
  DELIVERY_BUDGET_MS,
  type DeployStorm,
  deployStorm,
  LIMITS,
  monthlyCost,
  PARTYSOCKET,
  PRICES,
  planChannel,
  planRelays,
  RELAY_HEADROOM,
  type ResumeCosts,
  resumeCostsFrom,
  type StormResult,
  simulate,
  TARGET_UTILIZATION,
  type Workload,
} from "./lib/scale.ts";
import { Receivers, SECRET, startWorkerProcess } from "./lib/stack.ts";
import { fmt, percentile, table } from "./lib/stats.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const args = process.argv.slice(2);
const flag = (name: string) => args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const log = (line: string) => process.stderr.write(`[scale] ${line}\n`);
mkdirSync(join(root, "bench/results"), { recursive: true });

// ---------------------------------------------------------------------------------------------
// Measuring

interface Measured {
  costs: Costs;
  /** The model checked against a sharded channel measured end to end (ingest round trip, ms). */
  check: { sockets: number; shards: number; measuredMs: number; predictedSerialMs: number };
  raw: Record<string, number>;
  at: string;
}

/** One ingest of `n` events on each of `channels` (a channel name, or several); its round trip, ms. */
async function post(base: string, channels: string | string[], n: number, seq: { i: number }): Promise<number> {
  const names = typeof channels === "string" ? [channels] : channels;
  const events = names.flatMap((channel) =>
    Array.from({ length: n }, () => ({ id: `scale-${process.pid}-${seq.i++}`, channel, event: "tick", data: { n: seq.i }, ts: Date.now() })),
  );
  const body = JSON.stringify({ events });
  const started = performance.now();
  const res = await fetch(`${base}/ingest`, {
    method: "POST",
    body,
    headers: { "content-type": "application/json", [SIGNATURE_HEADER]: await signBody(SECRET, body) },
  });
  await res.arrayBuffer();
  if (!res.ok) throw new Error(`ingest answered ${res.status}`);
  return performance.now() - started;
}

async function measure(): Promise<Measured> {
  const { process: worker, url: base } = await startWorkerProcess({
    INGEST_SECRET: SECRET,
    PUBLIC_CHANNELS: "*",
    MAX_SOCKETS_PER_CHANNEL: "32768",
    SHARDS: "s2:*=2,s4:*=4,s8:*=8",
  });
  const receivers = new Receivers();
  const seq = { i: 0 };
  try {
    log(`worker ready at ${base}`);
    // Every probe's channel and sockets first; then rounds that take a few samples of every probe
    // in turn, so a slow minute of this shared machine weighs on all of them alike.
    const SOCKETS = 1000;
    const CHECK = 2000;
    const CHANNELS = 20;
    const FRAME_EVENTS = 200;
    const WITNESSES = 64;
    await receivers.connect("ours", base.replace(/^http/, "ws"), ["m:fan"], SOCKETS, 0);
    await receivers.connect("ours", base.replace(/^http/, "ws"), ["s4:fan"], CHECK, 0);
    // Witnesses: 64 sockets on each of a 2-shard and an 8-shard channel (placed at random: every
    // shard gets some), so the last one to receive marks the slowest shard's delivery.
    await receivers.connect("ours", base.replace(/^http/, "ws"), ["s2:witness", "s8:witness"], WITNESSES, 0);
    // A publish's time to its last socket: from the POST until the last of the channel's sockets
    // has received it (the receivers run in a process of their own, on the same cores: their
    // share is counted in, as an upper bound). A sharded publish answers before its shards send.
    const now = () => performance.timeOrigin + performance.now();
    const toLastSocket = async (base: string, channel: string, n: number) => {
      await receivers.reset();
      const started = now();
      await post(base, channel, n, seq);
      const report = await receivers.wait({ [channel]: n });
      if (report.missing > 0) throw new Error(`${report.missing} deliveries missing on ${channel}`);
      return report.lastReceiveAt - started;
    };
    const probes = {
      ingest1: () => post(base, "m:empty", 1, seq),
      ingest200: () => post(base, "m:batch", 200, seq),
      channels20: () =>
        post(
          base,
          Array.from({ length: CHANNELS }, (_, j) => `m:multi:${j}`),
          1,
          seq,
        ),
      shards2: () => post(base, "s2:empty", 1, seq),
      shards8: () => post(base, "s8:empty", 1, seq),
      shards2Last: () => toLastSocket(base, "s2:witness", 1),
      shards8Last: () => toLastSocket(base, "s8:witness", 1),
      fan1000: () => toLastSocket(base, "m:fan", 1),
      fan1000x200: () => toLastSocket(base, "m:fan", FRAME_EVENTS),
      check: () => toLastSocket(base, "s4:fan", 1),
    } satisfies Record<string, () => Promise<number>>;
    const samples: Record<string, number[]> = Object.fromEntries(Object.keys(probes).map((k) => [k, []]));
    for (const probe of Object.values(probes)) for (let i = 0; i < 3; i++) await probe(); // warm-up
    const ROUNDS = 8;
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, probe] of Object.entries(probes)) for (let i = 0; i < 10; i++) samples[name]!.push(await probe());
      log(`round ${round + 1} of ${ROUNDS}`);
    }
    const raw = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, percentile(v, 50)])) as Record<keyof typeof probes, number>;
    log(
      `ingest ${fmt(raw.ingest1, 2)} ms, 200 events ${fmt(raw.ingest200, 2)} ms, 20 channels ${fmt(raw.channels20, 2)} ms, 2 shards ${fmt(raw.shards2, 2)} ms, 8 shards ${fmt(raw.shards8, 2)} ms`,
    );
    log(`1,000 sockets ${fmt(raw.fan1000, 2)} ms (${FRAME_EVENTS} events ${fmt(raw.fan1000x200, 2)} ms); 2,000 sockets over 4 shards ${fmt(raw.check, 2)} ms`);

    const ingestMs = raw.ingest1;
    const perEventMs = Math.max(0, (raw.ingest200 - ingestMs) / 199);
    const costs: Costs = {
      ingestMs,
      perEventMs,
      perChannelMs: Math.max(0.01, (raw.channels20 - ingestMs) / (CHANNELS - 1)),
      sendUs: Math.max(0.1, ((raw.fan1000 - ingestMs) / SOCKETS) * 1000),
      // The same publish with 200 events: what each further event adds to a socket's frame.
      sendPerEventUs: Math.max(0, ((raw.fan1000x200 - raw.fan1000 - (FRAME_EVENTS - 1) * perEventMs) / (FRAME_EVENTS - 1) / SOCKETS) * 1000),
      // Slope between 2 and 8 shards (same sockets): what each further shard adds to the last
      // socket's time, and to the ingest round trip (the root's share: it answers before they send).
      rpcMs: Math.max(0.01, (raw.shards8Last - raw.shards2Last) / 6),
      rpcRootMs: Math.max(0, Math.min((raw.shards8Last - raw.shards2Last) / 6, (raw.shards8 - raw.shards2) / 6)),
      networkMs: 0,
      ...relayAndTrigger(),
    };
    // Locally every object runs on this machine's two cores: a publish's shards are served one
    // after another, so the local prediction adds them up.
    const predictedSerialMs = ingestMs + 4 * costs.rpcMs + (CHECK * costs.sendUs) / 1000;
    return { costs, check: { sockets: CHECK, shards: 4, measuredMs: raw.check, predictedSerialMs }, raw, at: new Date().toISOString() };
  } finally {
    await receivers.close().catch(() => undefined);
    worker.kill("SIGTERM");
  }
}

/** The relay's drain rate, from the latest `npm run bench` results, and the capture cost per row. */
function relayAndTrigger(): Pick<Costs, "relayEventsPerSecond" | "triggerUs"> {
  const files = ["full", "default", "quick"].map((m) => join(root, `bench/results/${m}-backlog.json`)).filter(existsSync);
  files.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  const drain = files.length > 0 ? (JSON.parse(readFileSync(files[0]!, "utf8")) as { drainPerSecond: number }).drainPerSecond : 7000;
  if (files.length === 0) log("no bench/results/*-backlog.json: assuming a relay drains 7,000 events/s (run npm run bench to measure)");
  // What capture costs a writer per row: the Postgres CPU of a single-row transaction on a
  // watched table minus on a plain one, ~375 - ~250 us (pgbench, 16 clients, /proc; see the
  // writers bullet of docs/benchmarks.md). The trigger function's own time is only 39.7 us of it:
  // the rest is the outbox row (heap, index entries, WAL). Rows written many to a statement cost less.
  return { relayEventsPerSecond: drain, triggerUs: 125 };
}

// ---------------------------------------------------------------------------------------------
// Projecting

function costsFromArgs(measured: Costs): Costs {
  const override = (name: string, value: number) => {
    const text = flag(name);
    if (text === undefined) return value;
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) {
      process.stderr.write(`--${name} must be a non-negative number, got ${JSON.stringify(text)}\n`);
      process.exit(2);
    }
    return n;
  };
  return {
    ingestMs: override("ingest-ms", measured.ingestMs),
    perEventMs: override("per-event-ms", measured.perEventMs),
    perChannelMs: override("per-channel-ms", measured.perChannelMs),
    sendUs: override("send-us", measured.sendUs),
    sendPerEventUs: override("send-per-event-us", measured.sendPerEventUs),
    rpcMs: override("rpc-ms", measured.rpcMs),
    rpcRootMs: override("rpc-root-ms", measured.rpcRootMs),
    networkMs: override("network-ms", measured.networkMs),
    relayEventsPerSecond: override("relay-events-per-second", measured.relayEventsPerSecond),
    triggerUs: override("trigger-us", measured.triggerUs),
  };
}

const day = 4; // socket (re)connections per subscriber per day
const SCENARIOS: Workload[] = [
  {
    label: "1M subscribers on one channel, 1 event/s (a live score)",
    channels: 1,
    subscribersPerChannel: 1_000_000,
    eventsPerSecond: 1,
    connectsPerSubscriberPerDay: day,
  },
  { label: "1M subscribers on one channel, 10 events/s", channels: 1, subscribersPerChannel: 1_000_000, eventsPerSecond: 10, connectsPerSubscriberPerDay: day },
  {
    label: "1M subscribers on one channel, 100 events/s",
    channels: 1,
    subscribersPerChannel: 1_000_000,
    eventsPerSecond: 100,
    connectsPerSubscriberPerDay: day,
  },
  {
    label: "1M subscribers over 10,000 channels of 100, 1 event/s each",
    channels: 10_000,
    subscribersPerChannel: 100,
    eventsPerSecond: 1,
    connectsPerSubscriberPerDay: day,
  },
  {
    label: "100,000 events/s over 1,000 channels of 100 subscribers",
    channels: 1_000,
    subscribersPerChannel: 100,
    eventsPerSecond: 100,
    connectsPerSubscriberPerDay: day,
  },
  {
    label: "100,000 events/s over 10,000 channels of 10 subscribers",
    channels: 10_000,
    subscribersPerChannel: 10,
    eventsPerSecond: 10,
    connectsPerSubscriberPerDay: day,
  },
  {
    label: "100,000 events/s on one channel of 1,000 subscribers",
    channels: 1,
    subscribersPerChannel: 1_000,
    eventsPerSecond: 100_000,
    connectsPerSubscriberPerDay: day,
  },
];

function project(costs: Costs): { markdown: string; data: unknown[] } {
  const rows: (string | number)[][] = [];
  const costRows: (string | number)[][] = [];
  const data: unknown[] = [];
  for (const w of SCENARIOS) {
    const relays = planRelays(costs, w);
    const plan = planChannel(costs, w, relays);
    // Long enough for thousands of publishes (and at least a minute).
    const sim = simulate(costs, w, plan, relays, Math.max(60, Math.min(3600, 3000 / plan.publishesPerSecond)));
    const money = monthlyCost(costs, w, plan, relays, sim.mean);
    data.push({ workload: w, relays, plan, sim, money });
    const tree = plan.shards === 0 ? "unsharded" : `${plan.shards} x ${fmt(plan.socketsPerShard)}`;
    const deliveries = plan.shards === 0 ? "-" : `${fmt(plan.deliveriesPerSecond, 1)}/s of ${fmt(plan.eventsPerDelivery, 1)} ev`;
    rows.push([
      w.label,
      `${relays.partitions} (${fmt(relays.batchIntervalMs)} ms)`,
      `${fmt(plan.publishesPerSecond, 1)}/s of ${fmt(plan.eventsPerPublish, 1)} ev`,
      tree,
      `${fmt(plan.rootUtilization * 100)}%`,
      deliveries,
      plan.stable ? `${fmt(sim.p50)} / ${fmt(sim.p99)}` : "unbounded",
      plan.problems.length ? plan.problems.join("; ") : "fits",
    ]);
    costRows.push([
      w.label,
      `${fmt(money.workerRequests / 1e6)}M`,
      `${fmt(money.objectRequests / 1e6)}M`,
      `${fmt(money.gbSeconds / 1e6, 2)}M`,
      `$${fmt(money.usd)}`,
    ]);
  }
  const c = costs;
  const markdown = [
    `Per-hop costs used: ingest round trip ${fmt(c.ingestMs, 2)} ms, each further event of a channel ${fmt(c.perEventMs * 1000, 1)} us, each further channel (a root's publish) ${fmt(c.perChannelMs, 2)} ms, WebSocket send ${fmt(c.sendUs, 1)} us plus ${fmt(c.sendPerEventUs, 2)} us per further event in the frame, shard delivery RPC ${fmt(c.rpcMs, 2)} ms (the root's share ${fmt(c.rpcRootMs, 2)} ms), root-to-shard network ${fmt(c.networkMs, 1)} ms, relay ${fmt(c.relayEventsPerSecond)} events/s per partition, trigger ${fmt(c.triggerUs, 1)} us/row. Plans keep relays under ${RELAY_HEADROOM * 100}% of their drain rate, roots under ${TARGET_UTILIZATION * 100}% busy, a shard's delivery under ${DELIVERY_BUDGET_MS} ms, and at most ${fmt(Math.min(LIMITS.socketsPerObject, LIMITS.defaultSocketsPerChannel))} sockets per object (MAX_SOCKETS_PER_CHANNEL; Cloudflare allows ${fmt(LIMITS.socketsPerObject)}).`,
    "",
    table(
      [
        "workload",
        "relay partitions (batch)",
        "publishes per channel",
        "shards x sockets",
        "root busy",
        "deliveries per shard",
        "latency p50 / p99 (ms)",
        "limits",
      ],
      rows,
    ),
    "",
    `Cost per month at Cloudflare's list prices (Workers Paid; sockets reconnect ${day} times a day; objects billed while active; Worker CPU bounded by the whole ingest round trip):`,
    "",
    table(["workload", "Worker requests", "object requests", "GB-s", "USD / month"], costRows),
    "",
    `Prices: Workers ${PRICES.workerRequestsIncluded / 1e6}M requests included then $${PRICES.workerPerMillionRequests}/M; Durable Objects ${PRICES.doRequestsIncluded / 1e6}M requests included then $${PRICES.doPerMillionRequests}/M, ${fmt(PRICES.doGbSecondsIncluded)} GB-s included then $${PRICES.doPerMillionGbSeconds}/M GB-s at ${PRICES.doMemoryGb * 1000} MB per object; $${PRICES.monthlyMinimum} minimum.`,
  ].join("\n");
  return { markdown, data };
}

// ---------------------------------------------------------------------------------------------
// Deploy day

/** Used when no storm run left bench/results/storm.json: the figures docs/scale.md, "Deploy day", reports. */
const FALLBACK_RESUME: ResumeCosts = { acceptMs: 2.6, syncMs: 0.3, coalesced: true, socketsPerSync: 4.5 };

function resumeCosts(): { costs: ResumeCosts; from: string } {
  const file = join(root, "bench/results/storm.json");
  let costs = FALLBACK_RESUME;
  let from = "docs/scale.md (no bench/results/storm.json: run npx vitest run --project node test/faults/storm.test.ts to measure)";
  if (existsSync(file)) {
    const run = JSON.parse(readFileSync(file, "utf8")) as { at: string; shapes: StormResult[] };
    const measuredCosts = resumeCostsFrom(run.shapes);
    if (measuredCosts) {
      costs = measuredCosts;
      from = `test/faults/storm.test.ts, ${run.at}`;
    }
  }
  const override = (name: string, value: number) => (flag(name) === undefined ? value : Number(flag(name)));
  return {
    costs: {
      acceptMs: override("resume-accept-ms", costs.acceptMs),
      syncMs: override("resume-sync-ms", costs.syncMs),
      coalesced: !args.includes("--uncoalesced"),
      socketsPerSync: override("sockets-per-sync", costs.socketsPerSync),
    },
    from,
  };
}

function deployDay(): { markdown: string; data: unknown[] } {
  const { costs, from } = resumeCosts();
  const jitterMs = flag("jitter-ms") === undefined ? DEFAULT_JITTER_MS : Number(flag("jitter-ms"));
  const storms: Omit<DeployStorm, "jitterMs" | "reconnectDelayMs" | "connectionTimeoutMs">[] = [
    { label: "10,000 sockets on one channel over 4 shards", sockets: 10_000, channels: 1, shards: 4 },
    { label: "10,000 sockets over 50 channels of 200", sockets: 10_000, channels: 50, shards: 0 },
    { label: "100,000 sockets on one channel over 16 shards", sockets: 100_000, channels: 1, shards: 16 },
    { label: "100,000 sockets over 500 channels of 200", sockets: 100_000, channels: 500, shards: 0 },
    { label: "1M sockets on one channel over 150 shards", sockets: 1_000_000, channels: 1, shards: 150 },
  ];
  const rows: (string | number)[][] = [];
  const data: unknown[] = [];
  for (const base of storms) {
    const at = (window: number) =>
      deployStorm(costs, {
        ...base,
        jitterMs: window,
        reconnectDelayMs: PARTYSOCKET.minReconnectionDelayMs,
        connectionTimeoutMs: PARTYSOCKET.connectionTimeoutMs,
      });
    const plan = at(jitterMs);
    const wide = at(Math.max(jitterMs, Math.ceil(plan.queueFreeJitterMs / 1000) * 1000));
    data.push({ storm: base, jitterMs, plan, queueFree: wide });
    rows.push([
      base.label,
      `${fmt(plan.rootRequestsPerSecond)}/s${base.shards > 0 ? ` (syncs); each shard ${fmt(plan.shardRequestsPerSecond)}/s` : ""}`,
      `${fmt(plan.channelResumesPerSecond)}/s (${plan.bottleneck})`,
      `${fmt(plan.allResumedMs / 1000, 1)} s`,
      `${fmt(plan.maxWaitMs / 1000, 1)} s`,
      `${fmt(Math.max(jitterMs, Math.ceil(plan.queueFreeJitterMs / 1000) * 1000) / 1000)} s: ${fmt(wide.allResumedMs / 1000, 1)} s`,
      plan.problems.length ? plan.problems.join("; ") : "fits",
    ]);
  }
  const markdown = [
    `Resume costs used (${from}): ${fmt(costs.acceptMs, 2)} ms of the accepting object's time per socket, ${fmt(costs.syncMs, 2)} ms of a sharded channel's root (its share of a sync RPC), ${costs.coalesced ? `sync calls coalesced by each shard (${fmt(costs.socketsPerSync, 1)} sockets per call in the test; more when the root is busier)` : "one sync call per socket (--uncoalesced)"}. Window ${fmt(jitterMs / 1000, 1)} s after partysocket's ${PARTYSOCKET.minReconnectionDelayMs / 1000} s delay; partysocket's connection timeout ${PARTYSOCKET.connectionTimeoutMs / 1000} s; at most ${fmt(LIMITS.requestsPerSecondPerObject)} requests/s per object.`,
    "",
    table(["deploy", "requests per root (peak)", "channel serves", "all resumed", "longest wait", "queue-free window: all resumed", "limits"], rows),
  ].join("\n");
  return { markdown, data };
}

// ---------------------------------------------------------------------------------------------

let measured: Measured;
const costsFile = flag("costs");
if (costsFile) {
  measured = JSON.parse(readFileSync(costsFile, "utf8")) as Measured;
  log(`costs from ${costsFile} (measured ${measured.at})`);
} else {
  measured = await measure();
  writeFileSync(join(root, "bench/results/scale-costs.json"), JSON.stringify(measured, null, 2));
}
const costs = costsFromArgs(measured.costs);
const { check } = measured;
const projection = project(costs);
const deploy = deployDay();
const out = [
  "### Per-hop costs, measured here",
  "",
  table(
    ["what", "median (ms)"],
    Object.entries(measured.raw).map(([k, v]) => [
      {
        ingest1: "ingest, 1 event, no sockets",
        ingest200: "ingest, 200 events, no sockets",
        channels20: "ingest, 1 event on each of 20 channels, no sockets",
        fan1000x200: "200 events to the last of 1,000 sockets (unsharded)",
        shards2: "ingest, 1 event, 2 shards, no sockets",
        shards8: "ingest, 1 event, 8 shards, no sockets",
        shards2Last: "1 event to the last of 64 sockets over 2 shards",
        shards8Last: "1 event to the last of 64 sockets over 8 shards",
        fan1000: "1 event to the last of 1,000 sockets (unsharded)",
        check: "1 event to the last of 2,000 sockets over 4 shards",
      }[k] ?? k,
      fmt(v, 2),
    ]),
  ),
  "",
  `Model check: 2,000 sockets over 4 shards, measured ${fmt(check.measuredMs, 2)} ms; the model, adding the hops up as they run on this machine's two shared cores, predicts ${fmt(check.predictedSerialMs, 2)} ms (${(check.measuredMs / check.predictedSerialMs).toFixed(2)}x).`,
  "",
  "### Projection",
  "",
  projection.markdown,
  "",
  "### Deploy day",
  "",
  deploy.markdown,
  "",
].join("\n");
process.stdout.write(`\n${out}`);
writeFileSync(join(root, "bench/results/scale-model.json"), JSON.stringify({ measured, costs, projection: projection.data, deployDay: deploy.data }, null, 2));
