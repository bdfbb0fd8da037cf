/**
 * Outages of the relay's two peers. The Worker refusing connections, then answering 500: the relay
 * backs off, keeps re-sending the same bounded batch (events wait in Postgres, not in memory), and
 * delivers everything after recovery. Postgres restarting under the relay: it reconnects and
 * carries on from its cursor.
 */
import { expect, it } from "vitest";
import type { Relay } from "../../relay/relay.ts";
import { type PostgresHandle, startEmbedded } from "../../scripts/postgres.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { expectExactlyOnceInOrder, insertNumbered, writeNumbered } from "./ledger.ts";

const stack = useStack({ worker: {} });

it("survives a Worker outage (refused, then 500): bounded retries of one batch, then everything, once, in order", async () => {
  const db: TestDatabase = await testDatabase("outage");
  const proxy: FaultProxy = await startFaultProxy(stack.worker.url);
  const subs = await Promise.all(["out-a", "out-b"].map((c) => TestSubscriber.connect(stack.worker.url, c)));
  const relay: Relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url, batchSize: 100 });
  try {
    await relayEvent(relay, "idle");
    proxy.mode = "refuse";
    const writing = Promise.all([writeNumbered(db, "out-a", 1, 2000, 50), writeNumbered(db, "out-b", 1, 2000, 50)]);
    await relayEvent(relay, "retry", (r) => r.attempt >= 3);
    proxy.mode = "error500";
    await writing; // 4000 events now wait in the outbox
    await relayEvent(relay, "retry", (r) => r.attempt >= 6);
    const during = proxy.ingests.slice();
    proxy.mode = "pass";
    // During the outage the relay re-sent one batch, the same ids every time, never more than
    // --batch-size: it did not accumulate the 4000 waiting events in memory.
    expect(during.length).toBeGreaterThanOrEqual(3);
    for (const ids of during) {
      expect(ids.length).toBeLessThanOrEqual(100);
      expect(ids).toEqual(during[0]);
    }
    expectExactlyOnceInOrder(await subs[0]!.eventCount(2000, 60_000), "out-a", 2000);
    expectExactlyOnceInOrder(await subs[1]!.eventCount(2000, 60_000), "out-b", 2000);
  } finally {
    for (const s of subs) s.close();
    await relay.stop();
    await proxy.close();
    await db.drop();
  }
});

it.each([
  ["outbox", "its cursor"],
  ["publication", "its slot (the tables' own changes, no trigger)"],
] as const)("reconnects when Postgres restarts under it and carries on from where it was: %s, %s", async (source, _carriesOnFrom) => {
  // Its own server, so that restarting it disturbs no other test.
  const server: PostgresHandle = await startEmbedded();
  const db = await testDatabase("restart", server.url);
  const channel = `restart-${source}`;
  await db.sql("create table ledger (channel text, n int, primary key (channel, n)); select realtime.watch('ledger', '{channel}')");
  // The outbox source numbers published events; the publication source, rows of a watched table.
  const write = (from: number, to: number) =>
    source === "outbox" ? writeNumbered(db, channel, from, to, 10) : insertNumbered(db, "ledger", channel, from, to, 10);
  const sub = await TestSubscriber.connect(stack.worker.url, channel);
  const relay = startRelay({ databaseUrl: db.url, workerUrl: stack.worker.url, source });
  try {
    await relayEvent(relay, source === "outbox" ? "idle" : "streaming", () => true, 60_000);
    await write(1, 500);
    await sub.eventCount(500);
    const disconnected = relayEvent(relay, "disconnected");
    await server.restart!();
    await disconnected;
    const back = relayEvent(relay, source === "outbox" ? "leader" : "streaming", () => true, 30_000);
    await write(501, 1000);
    await back;
    expectExactlyOnceInOrder(await sub.eventCount(1000, 60_000), channel, 1000);
  } finally {
    sub.close();
    await relay.stop();
    await server.stop();
  }
});
