/**
 * `npm run bench:worker`: workerd's CPU per ingest batch, the Worker alone (no Postgres, no
 * relay): POSTs signed batches of N events to one channel with M sockets, as the relay does, and
 * reads workerd's CPU time from /proc. For A/B runs of a Worker change; alternate the two builds
 * a few times, this machine is shared.
 *
 *   npm run bench:worker                    86x10,86x0,1x0,500x10 (events x sockets), 300 batches
 *   npm run bench:worker -- 86x10 1000      one shape, 1000 batches
 */
import WebSocket from "ws";
import { IngestClient } from "../relay/ingest-client.ts";
import { cpuPerEvent, cpuSnapshot } from "./lib/cpu.ts";
import { SECRET, startWorkerProcess } from "./lib/stack.ts";

const shapes = (process.argv[2] ?? "86x10,86x0,1x0,500x10").split(",").map((s) => s.split("x").map(Number) as [number, number]);
const batches = Number(process.argv[3] ?? 300);
const { process: worker, url } = await startWorkerProcess({ INGEST_SECRET: SECRET, PUBLIC_CHANNELS: "*", MAX_SOCKETS_PER_CHANNEL: "32768" });
const client = new IngestClient({ workerUrl: url, secret: SECRET, requestTimeoutMs: 30_000, retryBaseMs: 100, retryMaxMs: 1000, maxEventBytes: 1 << 20 });
const pad = "x".repeat(100);
let id = 0;
try {
  for (const [size, sockets] of shapes) {
    const channel = `worker-cpu-${size}x${sockets}-${Date.now()}`;
    const open: WebSocket[] = [];
    for (let i = 0; i < sockets; i++) {
      const ws = new WebSocket(`${url.replace(/^http/, "ws")}/parties/main/${channel}`, { perMessageDeflate: false });
      await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
      open.push(ws);
    }
    // A change event as realtime.watch writes it for the benchmark's table.
    const post = () =>
      client.post(
        Array.from({ length: size }, () => {
          const n = ++id;
          const data = JSON.stringify({
            op: "INSERT",
            schema: "public",
            table: "bench_ours",
            key: { id: n },
            new: { id: n, channel, w: 1, n, t0: Date.now(), pad },
            old: null,
          });
          return { id: `worker-cpu:${n}`, channel, event: "insert", data, ts: Date.now(), retain: false };
        }),
      );
    for (let b = 0; b < 20; b++) await post(); // warm-up
    const before = cpuSnapshot();
    const started = performance.now();
    for (let b = 0; b < batches; b++) await post();
    const wall = (performance.now() - started) / batches;
    const perEvent = cpuPerEvent(before, cpuSnapshot(), batches * size).workerd ?? 0;
    console.log(
      `${size} events x ${sockets} sockets: workerd ${((perEvent * size) / 1000).toFixed(2)} ms CPU per batch (${perEvent.toFixed(1)} us per event), ${wall.toFixed(2)} ms per batch`,
    );
    for (const ws of open) ws.close();
  }
} finally {
  worker.kill("SIGTERM");
}
