/**
 * The subscribers, in a process of their own so that receiving does not slow the writers (and
 * the writers do not delay receipt timestamps). Driven over IPC by bench/lib/stack.ts.
 *
 * A few "probe" sockets parse every event and record its latency (receipt time minus the `t0` the
 * writer stamped just before its INSERT, both on the machine's clock); the rest count events
 * with a cheap scan, as a browser that renders nothing would cost.
 */
import WebSocket from "ws";
import { percentile, Samples } from "./stats.ts";

/** Commands from the parent. */
export type ReceiverCommand =
  | { cmd: "connect"; system: "ours" | "baseline"; base: string; channels: string[]; perChannel: number; probesPerChannel: number }
  | { cmd: "reset" }
  | { cmd: "wait"; expectPerChannel: Record<string, number>; stallMs: number }
  | { cmd: "close" };

/** What a measurement window produced. */
export interface ReceiverReport {
  sockets: number;
  deliveries: number;
  /** Events each socket is missing (expected minus distinct received), summed. */
  missing: number;
  duplicates: number;
  outOfOrder: number;
  latency: { p50: number; p99: number; max: number; samples: number };
  firstReceiveAt: number;
  lastReceiveAt: number;
}

const now = () => performance.timeOrigin + performance.now();

interface Sub {
  ws: WebSocket;
  channel: string;
  probe: boolean;
  count: number;
  lastN: Map<number, number>; // probes: writer -> last n seen, for order checks
  seen: Set<string> | null;
}

let subs: Sub[] = [];
let latencies = new Samples();
let deliveries = 0;
let duplicates = 0;
let outOfOrder = 0;
let first = 0;
let last = 0;

function reply(message: unknown): void {
  process.send!(message);
}

/** Counts events in an `events` frame without parsing it: one `{"seq":` per event. */
function countEvents(text: string): number {
  let n = 0;
  for (let i = text.indexOf('{"seq":'); i !== -1; i = text.indexOf('{"seq":', i + 7)) n++;
  return n;
}

function onMessage(sub: Sub, system: "ours" | "baseline", raw: WebSocket.RawData): void {
  const at = now();
  if (first === 0) first = at;
  last = at;
  const text = raw.toString();
  if (system === "ours") {
    if (!sub.probe) {
      const n = countEvents(text);
      sub.count += n;
      deliveries += n;
      return;
    }
    const frame = JSON.parse(text) as { type: string; events?: { id: string; data: { new?: Row } }[] };
    if (frame.type !== "events") return;
    for (const e of frame.events!) record(sub, e.id, e.data.new!, at);
  } else {
    if (!sub.probe) {
      sub.count++;
      deliveries++;
      return;
    }
    const payload = JSON.parse(text) as { id: number; data: Row };
    record(sub, String(payload.id), payload.data, at);
  }
}

interface Row {
  id: number;
  w: number;
  n: number;
  t0: number;
}

function record(sub: Sub, id: string, row: Row, at: number): void {
  if (sub.seen!.has(id)) {
    duplicates++;
    return;
  }
  sub.seen!.add(id);
  sub.count++;
  deliveries++;
  latencies.push(at - row.t0);
  const prev = sub.lastN.get(row.w);
  if (prev !== undefined && row.n <= prev) outOfOrder++;
  sub.lastN.set(row.w, row.n);
}

async function connect(c: Extract<ReceiverCommand, { cmd: "connect" }>): Promise<void> {
  const opened: Promise<void>[] = [];
  for (const channel of c.channels) {
    for (let i = 0; i < c.perChannel; i++) {
      const url = c.system === "ours" ? `${c.base}/parties/main/${channel}` : `${c.base}/?room=${channel}`;
      const ws = new WebSocket(url, { perMessageDeflate: false });
      const sub: Sub = { ws, channel, probe: i < c.probesPerChannel, count: 0, lastN: new Map(), seen: i < c.probesPerChannel ? new Set() : null };
      subs.push(sub);
      opened.push(
        new Promise((resolve, reject) => {
          ws.once("error", reject);
          // Ours greets with a welcome frame; the baseline is ready once open.
          if (c.system === "ours") ws.once("message", () => resolve());
          else ws.once("open", () => resolve());
        }),
      );
      ws.on("message", (raw) => onMessage(sub, c.system, raw));
      // Stagger connects a little: thousands at once overflow the listen backlog.
      if (opened.length % 200 === 0) await Promise.all(opened.slice(-200));
    }
  }
  await Promise.all(opened);
}

function reset(): void {
  for (const s of subs) {
    s.count = 0;
    s.lastN.clear();
    s.seen?.clear();
  }
  latencies = new Samples();
  deliveries = duplicates = outOfOrder = first = last = 0;
}

/** Resolves when every socket has its channel's expected count, or nothing arrived for stallMs. */
function wait(expect: Record<string, number>, stallMs: number): Promise<void> {
  return new Promise((resolve) => {
    let lastProgress = now();
    let lastDeliveries = deliveries;
    const check = () => {
      if (subs.every((s) => s.count >= (expect[s.channel] ?? 0))) return resolve();
      if (deliveries !== lastDeliveries) {
        lastDeliveries = deliveries;
        lastProgress = now();
      } else if (now() - lastProgress > stallMs) {
        return resolve();
      }
      setTimeout(check, 20);
    };
    check();
  });
}

function report(expect: Record<string, number>): ReceiverReport {
  const values = latencies.values();
  return {
    sockets: subs.length,
    deliveries,
    missing: subs.reduce((sum, s) => sum + Math.max(0, (expect[s.channel] ?? 0) - s.count), 0),
    duplicates,
    outOfOrder,
    latency: { p50: percentile(values, 50), p99: percentile(values, 99), max: percentile(values, 100), samples: values.length },
    firstReceiveAt: first,
    lastReceiveAt: last,
  };
}

process.on("message", async (c: ReceiverCommand) => {
  try {
    if (c.cmd === "connect") {
      await connect(c);
      reply({ ok: true });
    } else if (c.cmd === "reset") {
      reset();
      reply({ ok: true });
    } else if (c.cmd === "wait") {
      await wait(c.expectPerChannel, c.stallMs);
      reply({ ok: true, report: report(c.expectPerChannel) });
    } else if (c.cmd === "close") {
      for (const s of subs) s.ws.terminate();
      subs = [];
      reply({ ok: true });
    }
  } catch (err) {
    reply({ ok: false, error: (err as Error).message });
  }
});
