/**
 * Adversarial commit orders. The outbox reader must not deliver by id (ids are taken before
 * commit) nor by xid (xids are taken at a transaction's first write, not at commit).
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import type { ChangeEvent } from "../../protocol/index.ts";
import type { Relay } from "../../relay/relay.ts";
import { testDatabase, type TestDatabase } from "../support/db.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

let db: TestDatabase;
let worker: TestWorker;
let proxy: FaultProxy;
let relay: Relay;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("order"), startTestWorker()]);
  proxy = await startFaultProxy(worker.url);
  await db.sql("create table r (id int primary key, v text not null); insert into r values (1, 'v0'); select realtime.watch('r')");
  relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url });
  await relayEvent(relay, "idle");
});

afterAll(async () => {
  await relay?.stop();
  await proxy?.close();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

const outboxId = (e: { id: string }) => BigInt(e.id.split("-")[1]!);

it("delivers both when A takes the smaller outbox id but commits after B: nothing is skipped", async () => {
  const sub = await TestSubscriber.connect(worker.url, "ab");
  try {
    const a = await db.client();
    const b = await db.client();
    await a.query("begin");
    await a.query("select realtime.publish('ab', 'a')");
    await b.query("select realtime.publish('ab', 'b')"); // commits now
    // B is delivered while A is still open: a reader tracking "last id sent" would now be past A.
    const [first] = await sub.waitForEvents(1);
    expect(first!.event).toBe("b");
    await a.query("commit");
    const events = await sub.waitForEvents(2);
    expect(events.map((e) => e.event)).toEqual(["b", "a"]);
    expect(outboxId(events[1]!) < outboxId(events[0]!)).toBe(true);
  } finally {
    sub.close();
  }
});

for (const sameWindow of [false, true]) {
  it(`delivers T1's version of a row before T2's when T2 took its xid first${sameWindow ? " (both commit while no relay runs: one snapshot window)" : ""}`, async () => {
    const sub = await TestSubscriber.connect(worker.url, "r");
    try {
      const t1 = await db.client();
      const t2 = await db.client();
      await t2.query("begin");
      const { rows: [x2] } = await t2.query<{ xid: string }>("select pg_current_xact_id()::text as xid"); // T2's xid now
      await t1.query("begin");
      const { rows: [x1] } = await t1.query<{ xid: string }>("select pg_current_xact_id()::text as xid");
      expect(BigInt(x2!.xid) < BigInt(x1!.xid)).toBe(true);
      if (sameWindow) await relay.stop();
      const tag = sameWindow ? "one window" : "two windows";
      await t1.query("update r set v = $1 where id = 1", [`t1 ${tag}`]);
      await t1.query("commit");
      await t2.query("update r set v = $1 where id = 1", [`t2 ${tag}`]); // after T1's commit
      await t2.query("commit");
      if (sameWindow) {
        relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url });
        // The new relay's first window holds both commits.
        await relayEvent(relay, "batch", (b) => b.events >= 2);
      }
      const events = await sub.waitForEvents(2);
      const versions = events.map((e) => [(e.data as ChangeEvent<{ v: string }>).old!.v, (e.data as ChangeEvent<{ v: string }>).new!.v]);
      expect(versions.slice(-2).map(([, v]) => v)).toEqual([`t1 ${tag}`, `t2 ${tag}`]);
      expect(versions.at(-1)![0]).toBe(`t1 ${tag}`);
    } finally {
      sub.close();
    }
  });
}

it("delays nothing and loses nothing around a long-running open transaction", async () => {
  const around = await TestSubscriber.connect(worker.url, "around");
  const longSub = await TestSubscriber.connect(worker.url, "long");
  try {
    const long = await db.client();
    await long.query("begin");
    await long.query("select realtime.publish('long', 'n', '{\"channel\":\"long\",\"n\":1}')");
    // 300 events commit while the long transaction stays open; all are delivered meanwhile.
    await writeNumbered(db, "around", 1, 300, 7);
    const events = await around.waitForEvents(300);
    expectExactlyOnceInOrder(events, "around", 300);
    expect(longSub.events).toEqual([]);
    await long.query("commit");
    expectExactlyOnceInOrder(await longSub.waitForEvents(1), "long", 1);
    // And nothing else arrived late or twice.
    expect(around.events).toHaveLength(300);
  } finally {
    around.close();
    longSub.close();
  }
});
