/**
 * Outages of the relay's two peers. The Worker refusing connections, then answering 500: the relay
 * backs off, keeps re-sending the same bounded batch (events wait in Postgres, not in memory), and
 * delivers everything after recovery. Postgres restarting under the relay: it reconnects and
 * carries on from its cursor.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Relay } from "../../relay/relay.ts";
import { startEmbedded, type PostgresHandle } from "../../scripts/postgres.ts";
import { testDatabase, type TestDatabase } from "../support/db.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

let worker: TestWorker;

beforeAll(async () => {
  worker = await startTestWorker();
});

afterAll(async () => {
  await worker?.dispose();
});

it("survives a Worker outage (refused, then 500): bounded retries of one batch, then everything, once, in order", async () => {
  const db: TestDatabase = await testDatabase("outage");
  const proxy: FaultProxy = await startFaultProxy(worker.url);
  const subs = await Promise.all(["out-a", "out-b"].map((c) => TestSubscriber.connect(worker.url, c)));
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
    expectExactlyOnceInOrder(await subs[0]!.waitForEvents(2000, 60_000), "out-a", 2000);
    expectExactlyOnceInOrder(await subs[1]!.waitForEvents(2000, 60_000), "out-b", 2000);
  } finally {
    for (const s of subs) s.close();
    await relay.stop();
    await proxy.close();
    await db.drop();
  }
});

it("reconnects when Postgres restarts under it and carries on from its cursor", async () => {
  // Its own server, so that restarting it disturbs no other test.
  const server: PostgresHandle = await startEmbedded();
  const db = await testDatabase("restart", server.url);
  const sub = await TestSubscriber.connect(worker.url, "restart");
  const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
  try {
    await relayEvent(relay, "idle");
    await writeNumbered(db, "restart", 1, 500, 10);
    await sub.waitForEvents(500);
    const disconnected = relayEvent(relay, "disconnected");
    await server.restart!();
    await disconnected;
    const back = relayEvent(relay, "leader", () => true, 30_000);
    await writeNumbered(db, "restart", 501, 1000, 10);
    await back;
    expectExactlyOnceInOrder(await sub.waitForEvents(1000, 60_000), "restart", 1000);
  } finally {
    sub.close();
    await relay.stop();
    await server.stop();
  }
});
