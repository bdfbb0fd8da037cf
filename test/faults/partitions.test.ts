/**
 * Partitioned relays: the outbox split by channel hash, each partition with its own leader lock,
 * cursor and doorbell, shipped in parallel by its own relay; per-channel order holds because a
 * channel always falls in the same partition. Under load: every event once, in order, and both
 * relays did part of the work.
 */
import { expect, it } from "vitest";
import { commonSnapshot } from "../../relay/outbox.ts";
import type { Relay } from "../../relay/relay.ts";
import { testDatabase } from "../support/db.ts";
import { caughtUp, relayEvent, spawnCli, startRelay } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { TEST_SECRET } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

const stack = useStack({ database: "partitions", worker: {} });

it("ships 12 channels under load with two partition relays: every event once, per-channel order, work shared", async () => {
  const CHANNELS = Array.from({ length: 12 }, (_, i) => `part-${i}`);
  const PER_CHANNEL = 400;
  const subs = await Promise.all(CHANNELS.map((c) => TestSubscriber.connect(stack.worker.url, c)));
  const relays: Relay[] = [0, 1].map((index) =>
    startRelay({ databaseUrl: stack.db.url, workerUrl: stack.worker.url, partition: { index, count: 2 }, batchSize: 50 }),
  );
  const shipped = [0, 0];
  relays.forEach((r, i) => {
    r.on("batch", (b) => {
      shipped[i]! += b.accepted;
    });
  });
  try {
    await Promise.all(relays.map((r) => relayEvent(r, "idle")));
    // Four writers, three channels each, interleaving transactions across partitions.
    await Promise.all([0, 1, 2, 3].map((w) => Promise.all(CHANNELS.filter((_, i) => i % 4 === w).map((c) => writeNumbered(stack.db, c, 1, PER_CHANNEL, 7)))));
    for (const [i, sub] of subs.entries()) expectExactlyOnceInOrder(await sub.eventCount(PER_CHANNEL, 60_000), CHANNELS[i]!, PER_CHANNEL);
    await Promise.all(relays.map((r) => caughtUp(r))); // the last acknowledgements are counted
    expect(shipped[0]! + shipped[1]!).toBe(CHANNELS.length * PER_CHANNEL);
    expect(shipped[0]).toBeGreaterThan(0);
    expect(shipped[1]).toBeGreaterThan(0);
    // Each partition has its own cursor and doorbell.
    const cursors = await stack.db.sql<{ name: string }>("select name from realtime.cursors order by name");
    expect(cursors.map((c) => c.name)).toEqual(["default:p0of2", "default:p1of2"]);
  } finally {
    for (const s of subs) s.close();
    await Promise.all(relays.map((r) => r.stop()));
  }
});

it("moves from one relay to two partitions and back without skipping or re-sending an event", async () => {
  const CHANNELS = ["grow-a", "grow-b", "grow-c", "grow-d"];
  const own = await testDatabase("partitions-grow"); // an outbox of its own: a new relay name ships all of it
  const subs = await Promise.all(CHANNELS.map((c) => TestSubscriber.connect(stack.worker.url, c)));
  const options = { databaseUrl: own.url, workerUrl: stack.worker.url, name: "grow", batchSize: 20 };
  /** Runs `relays` until they have shipped everything, returning what the Worker said of it. */
  const run = async (relays: Relay[]) => {
    const totals = { accepted: 0, duplicates: 0 };
    for (const r of relays) {
      r.on("batch", (b) => {
        totals.accepted += b.accepted;
        totals.duplicates += b.duplicates;
      });
    }
    await Promise.all(relays.map((r) => caughtUp(r)));
    await Promise.all(relays.map((r) => r.stop()));
    return totals;
  };
  const write = (from: number, to: number) => Promise.all(CHANNELS.map((c) => writeNumbered(own, c, from, to, 5)));
  try {
    // One relay ships 1..50 of each channel, then stops; 51..100 are written while none runs.
    await write(1, 50);
    expect(await run([startRelay(options)])).toEqual({ accepted: 200, duplicates: 0 });
    await write(51, 100);
    // Two partition relays take over where it stopped: nothing skipped, nothing sent twice.
    const partitioned = () => [0, 1].map((index) => startRelay({ ...options, partition: { index, count: 2 } }));
    expect(await run(partitioned())).toEqual({ accepted: 200, duplicates: 0 });
    const names = await own.sql<{ name: string }>("select name from realtime.cursors order by name");
    expect(names.map((c) => c.name)).toEqual(["grow", "grow:p0of2", "grow:p1of2"]);
    // Back to one relay, once the old cursor is retired as the README says.
    await write(101, 150);
    await own.sql("delete from realtime.cursors where name = 'grow'");
    expect(await run([startRelay(options)])).toEqual({ accepted: 200, duplicates: 0 });
    for (const [i, sub] of subs.entries()) expectExactlyOnceInOrder(await sub.eventCount(150), CHANNELS[i]!, 150);
  } finally {
    for (const s of subs) s.close();
    await own.drop();
  }
});

it("creates every partition's cursor with the first, so a partition not yet running keeps its rows", async () => {
  const relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.worker.url, name: "early", partition: { index: 0, count: 3 } });
  try {
    await relayEvent(relay, "idle");
    const names = await stack.db.sql<{ name: string }>("select name from realtime.cursors where name like 'early%' order by name");
    expect(names.map((c) => c.name)).toEqual(["early:p0of3", "early:p1of3", "early:p2of3"]);
  } finally {
    await relay.stop();
  }
});

it("starts a new partitioning from a snapshot that sees only what every old cursor saw", async () => {
  const cases = [
    ["100:110:102,105", "98:120:99,104,111"],
    ["5:5:", "7:9:8"],
    ["1:1:", "50:60:55"],
    ["200:230:201,229", "200:230:", "210:215:212"],
  ];
  for (const snaps of cases) {
    const common = commonSnapshot(snaps);
    // Postgres decides visibility: for every xid, common sees it iff every old snapshot does.
    const [row] = await stack.db.sql<{ wrong: string[] }>(
      `select coalesce(array_agg(x::text), '{}') as wrong from generate_series(1, 300) x
       where pg_visible_in_snapshot(x::text::xid8, $1::pg_snapshot)
             <> (select bool_and(pg_visible_in_snapshot(x::text::xid8, s::pg_snapshot)) from unnest($2::text[]) s)`,
      [common, snaps],
    );
    expect({ snaps, common, wrong: row!.wrong }).toEqual({ snaps, common, wrong: [] });
  }
});

it("lets one relay lead per partition, with standbys per partition", async () => {
  const env = { DATABASE_URL: stack.db.url, WORKER_URL: stack.worker.url, INGEST_SECRET: TEST_SECRET };
  const procs = ["0/2", "0/2", "1/2"].map((p) => spawnCli(["relay", "--partition", p], env));
  try {
    await Promise.all(procs.map((p) => p.waitForLog(["leading", "another relay leads; standing by"])));
    const leading = procs.map((p) => p.output().includes('"msg":"leading"'));
    expect(leading.filter((l, i) => l && i < 2)).toHaveLength(1); // one of the two for partition 0
    expect(leading[2]).toBe(true); // partition 1 has its own lock
  } finally {
    for (const p of procs) p.kill("SIGKILL");
  }
});

it("refuses a malformed --partition", async () => {
  const child = spawnCli(["relay", "--partition", "3/2"], { DATABASE_URL: stack.db.url, WORKER_URL: stack.worker.url, INGEST_SECRET: TEST_SECRET });
  expect(await child.exited).toBe(2);
  expect(child.output()).toMatch(/--partition index must be an integer from 0 to 1/);
});
