/**
 * Outbox retention: delivered rows older than the retention are deleted in bounded statements;
 * rows not yet delivered are never deleted, however old; writers are never blocked by a prune; and
 * pruning as often as possible during a burst with a Worker outage loses nothing.
 */
import { expect, it } from "vitest";
import { pruneDelivered } from "../../relay/outbox.ts";
import { caughtUp, relayEvent, startRelay } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

const stack = useStack({ database: "retention", worker: {}, ingestProxy: true });

const count = async (channel: string) =>
  Number((await stack.db.sql<{ n: string }>("select count(*) as n from realtime.outbox where channel = $1", [channel]))[0]!.n);
const age = (channel: string, interval: string) =>
  stack.db.sql(`update realtime.outbox set created_at = created_at - interval '${interval}' where channel = $1`, [channel]);

it("deletes delivered rows past the retention in statements of --prune-batch, and keeps younger ones", async () => {
  const relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.worker.url, retentionSeconds: 3600, pruneBatch: 100, pruneIntervalMs: 60_000 });
  try {
    await relayEvent(relay, "idle");
    await writeNumbered(stack.db, "old", 1, 250, 50);
    await writeNumbered(stack.db, "young", 1, 30);
    await caughtUp(relay);
    await age("old", "2 hours");
    await relay.stop();
    const restarted = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.worker.url, retentionSeconds: 3600, pruneBatch: 100, pruneIntervalMs: 60_000 });
    try {
      let round: { rows: number; statements: number } | null = null;
      restarted.on("pruned", (r) => (round ??= r));
      await relayEvent(restarted, "pruned");
      expect(round).toEqual({ rows: 250, statements: 3 });
      expect(await count("old")).toBe(0);
      expect(await count("young")).toBe(30);
    } finally {
      await restarted.stop();
    }
  } finally {
    await relay.stop();
  }
});

it("never deletes a row that is not delivered yet, however old, and delivers it later", async () => {
  const sub = await TestSubscriber.connect(stack.worker.url, "undelivered");
  const relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.ingestProxy.url, retentionSeconds: 0, pruneIntervalMs: 20 });
  try {
    await relayEvent(relay, "idle");
    stack.ingestProxy.mode = "error500";
    await writeNumbered(stack.db, "undelivered", 1, 40, 10);
    await age("undelivered", "30 days");
    await relayEvent(relay, "retry", (r) => r.attempt >= 2);
    // Prunes keep running during the outage; none touches the waiting rows.
    await relayEvent(relay, "pruned");
    await relayEvent(relay, "pruned");
    expect(await count("undelivered")).toBe(40);
    stack.ingestProxy.mode = "pass";
    expectExactlyOnceInOrder(await sub.eventCount(40), "undelivered", 40);
    // Delivered now, so the next prunes remove them.
    await caughtUp(relay);
    await relayEvent(relay, "pruned");
    await relayEvent(relay, "pruned");
    expect(await count("undelivered")).toBe(0);
  } finally {
    stack.ingestProxy.mode = "pass";
    sub.close();
    await relay.stop();
  }
});

it("does not block writers: an uncommitted prune does not make an insert wait", async () => {
  const relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.worker.url, retentionSeconds: 0, pruneIntervalMs: 60_000 });
  try {
    await relayEvent(relay, "idle");
    await writeNumbered(stack.db, "nowait", 1, 100, 100);
    await caughtUp(relay);
    await relay.stop();
    const pruner = await stack.db.client();
    await pruner.query("begin");
    const deleted = await pruneDelivered(pruner, 0, 1000);
    expect(deleted).toBeGreaterThan(0);
    // Inside the open prune, a writer inserts and commits with a 1 s lock timeout: no wait.
    const writer = await stack.db.client();
    await writer.query("set lock_timeout = '1s'");
    await writer.query("select realtime.publish('nowait', 'n', '{\"n\":101}')");
    await pruner.query("commit");
  } finally {
    await relay.stop();
  }
});

it("loses nothing when pruning runs constantly during a burst interrupted by a Worker outage", async () => {
  const sub = await TestSubscriber.connect(stack.worker.url, "race");
  const relay = startRelay({
    databaseUrl: stack.db.url,
    workerUrl: stack.ingestProxy.url,
    retentionSeconds: 0,
    pruneIntervalMs: 10,
    pruneBatch: 50,
    batchSize: 40,
  });
  let pruned = 0;
  relay.on("pruned", (r) => (pruned += r.rows));
  try {
    await relayEvent(relay, "idle");
    const writing = writeNumbered(stack.db, "race", 1, 3000, 3);
    await sub.eventCount(800, 60_000);
    stack.ingestProxy.mode = "error500";
    await relayEvent(relay, "retry", (r) => r.attempt >= 3);
    stack.ingestProxy.mode = "pass";
    await writing;
    expectExactlyOnceInOrder(await sub.eventCount(3000, 60_000), "race", 3000);
    expect(pruned).toBeGreaterThan(0);
  } finally {
    stack.ingestProxy.mode = "pass";
    sub.close();
    await relay.stop();
  }
});
