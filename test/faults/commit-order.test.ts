/**
 * Adversarial commit orders. The outbox reader must not deliver by id (ids are taken before
 * commit) nor by xid (xids are taken at a transaction's first write, not at commit).
 */
import { expect, it } from "vitest";
import type { ChangeEvent } from "../../protocol/index.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

const stack = useStack({
  database: "order",
  worker: {},
  ingestProxy: true,
  setup: "create table r (id int primary key, v text not null); insert into r values (1, 'v0'); select realtime.watch('r')",
  relay: {},
});

const outboxId = (e: { id: string }) => BigInt(e.id.split("-")[1]!);

it("delivers both when A takes the smaller outbox id but commits after B: nothing is skipped", async () => {
  const sub = await TestSubscriber.connect(stack.worker.url, "ab");
  try {
    const a = await stack.db.client();
    const b = await stack.db.client();
    await a.query("begin");
    await a.query("select realtime.publish('ab', 'a')");
    await b.query("select realtime.publish('ab', 'b')"); // commits now
    // B is delivered while A is still open: a reader tracking "last id sent" would now be past A.
    const [first] = await sub.eventCount(1);
    expect(first!.event).toBe("b");
    await a.query("commit");
    const events = await sub.eventCount(2);
    expect(events.map((e) => e.event)).toEqual(["b", "a"]);
    expect(outboxId(events[1]!) < outboxId(events[0]!)).toBe(true);
  } finally {
    sub.close();
  }
});

for (const sameWindow of [false, true]) {
  it(`delivers T1's version of a row before T2's when T2 took its xid first${sameWindow ? " (both commit while no relay runs: one snapshot window)" : ""}`, async () => {
    const sub = await TestSubscriber.connect(stack.worker.url, "r");
    try {
      const t1 = await stack.db.client();
      const t2 = await stack.db.client();
      await t2.query("begin");
      const {
        rows: [x2],
      } = await t2.query<{ xid: string }>("select pg_current_xact_id()::text as xid"); // T2's xid now
      await t1.query("begin");
      const {
        rows: [x1],
      } = await t1.query<{ xid: string }>("select pg_current_xact_id()::text as xid");
      expect(BigInt(x2!.xid) < BigInt(x1!.xid)).toBe(true);
      if (sameWindow) await stack.relay.stop();
      const tag = sameWindow ? "one window" : "two windows";
      await t1.query("update r set v = $1 where id = 1", [`t1 ${tag}`]);
      await t1.query("commit");
      await t2.query("update r set v = $1 where id = 1", [`t2 ${tag}`]); // after T1's commit
      await t2.query("commit");
      if (sameWindow) {
        stack.relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.ingestProxy.url });
        // The new relay's first window holds both commits.
        await relayEvent(stack.relay, "batch", (b) => b.events >= 2);
      }
      const events = await sub.eventCount(2);
      const versions = events.map((e) => [(e.data as ChangeEvent<{ v: string }>).old!.v, (e.data as ChangeEvent<{ v: string }>).new!.v]);
      expect(versions.slice(-2).map(([, v]) => v)).toEqual([`t1 ${tag}`, `t2 ${tag}`]);
      expect(versions.at(-1)![0]).toBe(`t1 ${tag}`);
    } finally {
      sub.close();
    }
  });
}

it("delays nothing and loses nothing around a long-running open transaction", async () => {
  const around = await TestSubscriber.connect(stack.worker.url, "around");
  const longSub = await TestSubscriber.connect(stack.worker.url, "long");
  try {
    const long = await stack.db.client();
    await long.query("begin");
    await long.query("select realtime.publish('long', 'n', '{\"channel\":\"long\",\"n\":1}')");
    // 300 events commit while the long transaction stays open; all are delivered meanwhile.
    await writeNumbered(stack.db, "around", 1, 300, 7);
    const events = await around.eventCount(300);
    expectExactlyOnceInOrder(events, "around", 300);
    expect(longSub.events).toEqual([]);
    await long.query("commit");
    expectExactlyOnceInOrder(await longSub.eventCount(1), "long", 1);
    // And nothing else arrived late or twice.
    expect(around.events).toHaveLength(300);
  } finally {
    around.close();
    longSub.close();
  }
});
