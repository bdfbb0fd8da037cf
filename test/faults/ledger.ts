/**
 * Bookkeeping for fault tests: write numbered events per channel, and check that a subscriber
 * received exactly those, each once, in order, with gapless seqs.
 */
import { expect } from "vitest";
import type { ChannelEvent } from "../../protocol/index.ts";
import type { TestDatabase } from "../support/db.ts";
import type { FaultProxy } from "../support/fault-proxy.ts";
import { spawnCli } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { TEST_SECRET } from "../support/worker.ts";

/** Data of a numbered event. */
export interface Numbered {
  channel: string;
  n: number;
}

/**
 * Publishes `n = from..to` on `channel` from one connection, `perTx` events per transaction, so
 * the channel's commit order is exactly 1, 2, 3, ...
 */
export async function writeNumbered(db: TestDatabase, channel: string, from: number, to: number, perTx = 1): Promise<void> {
  const c = await db.client();
  for (let n = from; n <= to; n += perTx) {
    const last = Math.min(to, n + perTx - 1);
    await c.query("select realtime.publish($1, 'n', jsonb_build_object('channel', $1::text, 'n', g)) from generate_series($2::int, $3::int) g", [
      channel,
      n,
      last,
    ]);
  }
}

/**
 * Inserts rows `n = from..to` of `channel` into `table` (watched with the template `{channel}`),
 * `perTx` rows per transaction: the table's own changes, for capture that decodes them.
 */
export async function insertNumbered(db: TestDatabase, table: string, channel: string, from: number, to: number, perTx = 1): Promise<void> {
  const c = await db.client();
  for (let n = from; n <= to; n += perTx) {
    await c.query(`insert into ${table} (channel, n) select $1, g from generate_series($2::int, $3::int) g`, [channel, n, Math.min(to, n + perTx - 1)]);
  }
}

/** The number of a numbered event: a published one's `n`, or a change event's `new.n`. */
function numberOf(e: ChannelEvent): number {
  const d = e.data as Numbered & { new?: Numbered };
  return d.new?.n ?? d.n;
}

/** Asserts `events` are exactly `n = 1..count` of `channel`, once each, in order, seqs gapless. */
export function expectExactlyOnceInOrder(events: readonly ChannelEvent[], channel: string, count: number): void {
  const ns = events.map(numberOf);
  const missing = count - new Set(ns).size;
  const duplicates = ns.length - new Set(ns).size;
  expect({ channel, received: ns.length, missing, duplicates }).toEqual({ channel, received: count, missing: 0, duplicates: 0 });
  expect(ns).toEqual(Array.from({ length: count }, (_, i) => i + 1));
  expect(new Set(events.map((e) => e.id)).size).toBe(count);
  for (let i = 1; i < events.length; i++) expect(events[i]!.seq).toBe(events[i - 1]!.seq + 1);
}

/**
 * The relay-crash scenario, for any source: a relay process (the CLI, with `env` added, posting
 * through `proxy`; `ready` is the log line that says it reads) is SIGKILLed twice mid-burst while
 * numbered events are written on `channels`, and started again; every event must arrive once, in
 * order, and the Worker must have been sent each id (a re-sent batch repeats ids; the channels
 * drop the copies).
 */
export async function killTwiceDuringBurst(options: {
  db: TestDatabase;
  workerUrl: string;
  proxy: FaultProxy;
  channels: string[];
  perChannel: number;
  env?: Record<string, string>;
  ready: string;
  /** Write rows into this table (watched with `{channel}`) instead of publishing events. */
  table?: string;
}): Promise<void> {
  const { db, channels, perChannel } = options;
  const start = () =>
    spawnCli(["relay"], {
      DATABASE_URL: db.url,
      WORKER_URL: options.proxy.url,
      INGEST_SECRET: TEST_SECRET,
      RELAY_BATCH_SIZE: "37",
      RELAY_POLL_INTERVAL_MS: "100",
      RELAY_RETRY_BASE_MS: "20",
      RELAY_RETRY_MAX_MS: "200",
      ...options.env,
    });
  const subs = await Promise.all(channels.map((c) => TestSubscriber.connect(options.workerUrl, c)));
  options.proxy.ingests.length = 0;
  let relay = start();
  const killed: number[] = [];
  try {
    await relay.waitForLog(options.ready);
    const writing = Promise.all(
      channels.map((c) => (options.table ? insertNumbered(db, options.table, c, 1, perChannel, 5) : writeNumbered(db, c, 1, perChannel, 5))),
    );
    for (const atLeast of [300, 900]) {
      // Kill while events are flowing: some batches acknowledged, one possibly in flight.
      await subs[0]!.eventCount(atLeast, 60_000);
      relay.kill("SIGKILL");
      await relay.exited;
      killed.push(subs[0]!.events.length);
      relay = start();
    }
    await writing;
    for (const [i, sub] of subs.entries()) expectExactlyOnceInOrder(await sub.eventCount(perChannel, 60_000), channels[i]!, perChannel);
    // The kills happened mid-burst, not after it.
    expect(killed.every((n) => n < perChannel)).toBe(true);
    // Every event the Worker was sent twice was dropped as a duplicate, never shown twice.
    expect(new Set(options.proxy.ingests.flat()).size).toBe(channels.length * perChannel);
  } finally {
    relay.kill("SIGKILL");
    await relay.exited;
    for (const s of subs) s.close();
  }
}
