/**
 * `npm run bench:scale`: measures this system's per-hop costs on this machine (a real Worker in
 * workerd, real sockets), checks the model against a sharded channel measured end to end, then
 * projects: what 1,000,000 concurrent subscribers and 100,000 events/s need and cost
 * (bench/lib/scale.ts is the model, docs/scale.md explains it).
 *
 *   npm run bench:scale                      measure, then project
 *   npm run bench:scale -- --costs=FILE      project from costs measured earlier (JSON)
 *   npm run bench:scale -- --send-us=5 ...   override any cost (send-us, rpc-ms, ingest-ms,
 *                                            per-event-ms, network-ms, relay-events-per-second,
 *                                            trigger-us), e.g. with figures from production
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { signBody, SIGNATURE_HEADER } from "../protocol/index.ts";
import {
  LIMITS,
  monthlyCost,
  planChannel,
  planRelays,
  PRICES,
  simulate,
  TARGET_UTILIZATION,
  type Costs,
  type Workload,
} from "./lib/scale.ts";
import { Receivers, SECRET } from "./lib/stack.ts";
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

async function post(base: string, channel: string, n: number, seq: { i: number }): Promise<number> {
  const events = Array.from({ length: n }, () => ({ id: `scale-${process.pid}-${seq.i++}`, channel, event: "tick", data: { n: seq.i }, ts: Date.now() }));
  const body = JSON.stringify({ events });
  const started = performance.now();
  const res = await fetch(`${base}/ingest`, { method: "POST", body, headers: { "content-type": "application/json", [SIGNATURE_HEADER]: await signBody(SECRET, body) } });
  await res.arrayBuffer();
  if (!res.ok) throw new Error(`ingest answered ${res.status}`);
  return performance.now() - started;
}

/** Median round trip of `times` sequential ingests of `n` events to `channel` (after a warm-up). */
async function median(base: string, channel: string, n: number, times: number, seq: { i: number }): Promise<number> {
  for (let i = 0; i < 5; i++) await post(base, channel, n, seq);
  const samples: number[] = [];
  for (let i = 0; i < times; i++) samples.push(await post(base, channel, n, seq));
  return percentile(samples, 50);
}

async function measure(): Promise<Measured> {
  const worker = spawn(process.execPath, [join(root, "node_modules/tsx/dist/cli.mjs"), join(root, "bench/lib/worker-process.ts")], {
    env: {
      ...process.env,
      BINDINGS: JSON.stringify({ INGEST_SECRET: SECRET, PUBLIC_CHANNELS: "*", MAX_SOCKETS_PER_CHANNEL: "32768", SHARDS: "s2:*=2,s4:*=4,s8:*=8" }),
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const base = await new Promise<string>((resolve, reject) => {
    let out = "";
    worker.stdout!.on("data", (d: Buffer) => {
      out += d;
      const m = /ready (\S+) (\S+)/.exec(out);
      if (m) resolve(m[2]!);
    });
    worker.once("exit", (code) => reject(new Error(`worker process exited ${code}`)));
  });
  const receivers = new Receivers();
  const seq = { i: 0 };
  try {
    log(`worker ready at ${base}`);
    const raw: Record<string, number> = {};
    raw.ingest1 = await median(base, "m:empty", 1, 200, seq);
    raw.ingest200 = await median(base, "m:batch", 200, 40, seq);
    raw.shards2 = await median(base, "s2:empty", 1, 150, seq);
    raw.shards8 = await median(base, "s8:empty", 1, 150, seq);
    log(`ingest ${fmt(raw.ingest1, 2)} ms, 200 events ${fmt(raw.ingest200, 2)} ms, 2 shards ${fmt(raw.shards2, 2)} ms, 8 shards ${fmt(raw.shards8, 2)} ms`);
    const SOCKETS = 1000;
    await receivers.connect("ours", base.replace(/^http/, "ws"), ["m:fan"], SOCKETS, 0);
    raw.fan1000 = await median(base, "m:fan", 1, 100, seq);
    const CHECK = 2000;
    await receivers.connect("ours", base.replace(/^http/, "ws"), ["s4:fan"], CHECK, 0);
    raw.check = await median(base, "s4:fan", 1, 100, seq);
    log(`1,000 sockets ${fmt(raw.fan1000, 2)} ms; 2,000 sockets over 4 shards ${fmt(raw.check, 2)} ms`);

    const ingestMs = raw.ingest1;
    const costs: Costs = {
      ingestMs,
      perEventMs: Math.max(0, (raw.ingest200 - ingestMs) / 199),
      sendUs: Math.max(0.1, ((raw.fan1000 - ingestMs) / SOCKETS) * 1000),
      // Slope between 2 and 8 shards: what each further shard adds.
      rpcMs: Math.max(0.01, (raw.shards8 - raw.shards2) / 6),
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

/** The relay's drain rate and the trigger's cost, from the latest `npm run bench` results. */
function relayAndTrigger(): Pick<Costs, "relayEventsPerSecond" | "triggerUs"> {
  const files = ["full", "default", "quick"].map((m) => join(root, `bench/results/${m}-backlog.json`)).filter(existsSync);
  files.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  const drain = files.length > 0 ? (JSON.parse(readFileSync(files[0]!, "utf8")) as { drainPerSecond: number }).drainPerSecond : 7000;
  if (files.length === 0) log("no bench/results/*-backlog.json: assuming a relay drains 7,000 events/s (run npm run bench to measure)");
  // The trigger's cost per row is measured by `npm run bench` (docs/benchmarks.md): 39.7 us.
  return { relayEventsPerSecond: drain, triggerUs: 39.7 };
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
    sendUs: override("send-us", measured.sendUs),
    rpcMs: override("rpc-ms", measured.rpcMs),
    networkMs: override("network-ms", measured.networkMs),
    relayEventsPerSecond: override("relay-events-per-second", measured.relayEventsPerSecond),
    triggerUs: override("trigger-us", measured.triggerUs),
  };
}

const SCENARIOS: Workload[] = [
  { label: "1M subscribers on one channel, 1 publish/s (a live score)", channels: 1, subscribersPerChannel: 1_000_000, publishesPerSecond: 1, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
  { label: "1M subscribers on one channel, 10 publishes/s", channels: 1, subscribersPerChannel: 1_000_000, publishesPerSecond: 10, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
  { label: "1M subscribers on one channel, 50 publishes/s", channels: 1, subscribersPerChannel: 1_000_000, publishesPerSecond: 50, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
  { label: "1M subscribers over 10,000 channels of 100, 1 publish/s each", channels: 10_000, subscribersPerChannel: 100, publishesPerSecond: 1, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
  { label: "100,000 events/s over 1,000 channels of 100 subscribers", channels: 1_000, subscribersPerChannel: 100, publishesPerSecond: 100, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
  { label: "100,000 events/s over 10,000 channels of 10 subscribers", channels: 10_000, subscribersPerChannel: 10, publishesPerSecond: 10, eventsPerPublish: 1, connectsPerSubscriberPerDay: 4 },
];

function project(costs: Costs): { markdown: string; data: unknown[] } {
  const rows: (string | number)[][] = [];
  const costRows: (string | number)[][] = [];
  const data: unknown[] = [];
  for (const w of SCENARIOS) {
    const plan = planChannel(costs, w);
    const sim = simulate(costs, w, plan, w.publishesPerSecond >= 10 ? 60 : 600);
    const money = monthlyCost(costs, w, plan);
    const events = w.channels * w.publishesPerSecond * w.eventsPerPublish;
    const relays = planRelays(costs, events);
    data.push({ workload: w, plan, sim, money, relays });
    rows.push([
      w.label,
      plan.shards === 0 ? "unsharded" : `${plan.shards} x ${fmt(plan.socketsPerShard)}`,
      `${fmt(plan.rootUtilization * 100)}% / ${plan.shards ? `${fmt(plan.shardUtilization * 100)}%` : "-"}`,
      sim.stable ? `${fmt(sim.p50)} / ${fmt(sim.p99)}` : "unbounded",
      relays.partitions,
      plan.problems.length ? plan.problems.join("; ") : "fits",
    ]);
    costRows.push([w.label, `${fmt(money.workerRequests / 1e6)}M`, `${fmt(money.objectRequests / 1e6)}M`, `${fmt(money.gbSeconds / 1e6, 2)}M`, `$${fmt(money.usd)}`]);
  }
  const c = costs;
  const markdown = [
    `Per-hop costs used: ingest request ${fmt(c.ingestMs, 2)} ms, each further event in it ${fmt(c.perEventMs * 1000, 1)} us, WebSocket send ${fmt(c.sendUs, 1)} us, shard RPC ${fmt(c.rpcMs, 2)} ms, root-to-shard network ${fmt(c.networkMs, 1)} ms, relay ${fmt(c.relayEventsPerSecond)} events/s, trigger ${fmt(c.triggerUs, 1)} us/row. Objects planned to stay under ${TARGET_UTILIZATION * 100}% busy; per object at most ${fmt(Math.min(LIMITS.socketsPerObject, LIMITS.defaultSocketsPerChannel))} sockets (MAX_SOCKETS_PER_CHANNEL; Cloudflare allows ${fmt(LIMITS.socketsPerObject)}).`,
    "",
    table(["workload", "shards x sockets", "busy root / shard", "latency p50 / p99 (ms)", "relays", "limits"], rows),
    "",
    "Cost per month at Cloudflare's list prices (Workers Paid; sockets reconnect 4 times a day; Worker CPU bounded by the whole ingest cost):",
    "",
    table(["workload", "Worker requests", "object requests", "GB-s", "USD / month"], costRows),
    "",
    `Prices: Workers ${PRICES.workerRequestsIncluded / 1e6}M requests included then $${PRICES.workerPerMillionRequests}/M; Durable Objects ${PRICES.doRequestsIncluded / 1e6}M requests included then $${PRICES.doPerMillionRequests}/M, ${fmt(PRICES.doGbSecondsIncluded)} GB-s included then $${PRICES.doPerMillionGbSeconds}/M GB-s at ${PRICES.doMemoryGb * 1000} MB per object; $${PRICES.monthlyMinimum} minimum.`,
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
const out = [
  "### Per-hop costs, measured here",
  "",
  table(
    ["what", "median round trip (ms)"],
    Object.entries(measured.raw).map(([k, v]) => [
      {
        ingest1: "ingest, 1 event, no sockets",
        ingest200: "ingest, 200 events, no sockets",
        shards2: "ingest, 1 event, 2 shards, no sockets",
        shards8: "ingest, 1 event, 8 shards, no sockets",
        fan1000: "ingest, 1 event, 1,000 sockets (unsharded)",
        check: "ingest, 1 event, 2,000 sockets over 4 shards",
      }[k] ?? k,
      fmt(v, 2),
    ]),
  ),
  "",
  `Model check: 2,000 sockets over 4 shards, measured ${fmt(check.measuredMs, 2)} ms; the model, adding the hops up as they run on this machine's two shared cores, predicts ${fmt(check.predictedSerialMs, 2)} ms (${(check.measuredMs / check.predictedSerialMs).toFixed(2)}x).`,
  "",
  "### Projection",
  "",
  project(costs).markdown,
  "",
].join("\n");
process.stdout.write(`\n${out}`);
writeFileSync(join(root, "bench/results/scale-model.json"), JSON.stringify({ measured, costs, projection: project(costs).data }, null, 2));
