/**
 * Capture `publication` (`--source publication`): no trigger; the watched tables are in the
 * publication `realtime`, and the relay decodes their own changes (pgoutput) into the events the
 * trigger modes write. Every writer is captured (COPY included); renames are followed; an update
 * that leaves a TOASTed column unchanged is filled from the retained row, or names the column;
 * a relay SIGKILLed mid-burst and a Worker answering 500 lose and duplicate nothing.
 * (test/e2e/fidelity.test.ts runs the value-fidelity properties in this mode too.)
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChangeEvent, ChannelEvent, SnapshotRow } from "../../protocol/index.ts";
import type { Relay } from "../../relay/relay.ts";
import { expectExactlyOnceInOrder, insertNumbered, killTwiceDuringBurst } from "../faults/ledger.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;
let relay: Relay;

const logs = () => (relay as Relay & { logLines: string[] }).logLines.join("\n");
const data = (events: ChannelEvent[]) => events.map((e) => e.data as ChangeEvent & { unchanged?: string[] });

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("publication"), startTestWorker()]);
  await db.sql(`
    create table docs (id bigint primary key, title text not null, body text);
    select realtime.watch('docs');
    create table notes (id int primary key, tenant int not null, body text);
    alter table notes replica identity full;
    select realtime.watch('notes', 'notes:{tenant}');
    create table pages (id int primary key, title text, body text);
    select realtime.watch('pages', retain => true);
    create table attachments (id int primary key, body text);
    select realtime.watch('attachments');
    create table keyless (a int, b text);
    alter table keyless replica identity full;
  `);
  relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, source: "publication" });
  await relayEvent(relay, "streaming", undefined, 60_000);
});

afterAll(async () => {
  await relay?.stop();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

/** Waits for `n` events, with the relay's log in the error should they not come. */
async function eventsOf(sub: TestSubscriber, n: number): Promise<ChannelEvent[]> {
  return sub.eventCount(n, 20_000).catch((err: Error) => {
    throw new Error(`${err.message}\n${logs()}`);
  });
}

describe("publication capture", () => {
  it("switches capture: no trigger on a watched table, every watched table in the publication", async () => {
    expect(await db.sql("select capture from realtime.installation")).toEqual([{ capture: "publication" }]);
    expect(await db.sql("select count(*)::int as n from pg_trigger where tgname like 'realtime_capture%'")).toEqual([{ n: 0 }]);
    const published = await db.sql<{ tablename: string }>("select tablename::text from pg_publication_tables where pubname = 'realtime' order by 1");
    expect(published.map((r) => r.tablename)).toEqual(["attachments", "docs", "notes", "pages"]);
  });

  it("turns inserts, updates and deletes into the trigger modes' events; old is the key under the default replica identity", async () => {
    const sub = await TestSubscriber.connect(worker.url, "docs");
    try {
      await db.sql("insert into docs values (9007199254740993, 'one', 'b')");
      await db.sql("update docs set title = 'uno' where id = 9007199254740993");
      await db.sql("update docs set id = 2 where id = 9007199254740993");
      await db.sql("delete from docs where id = 2");
      const events = await eventsOf(sub, 5);
      expect(events.map((e) => e.event)).toEqual(["insert", "update", "delete", "insert", "delete"]);
      // The frames carry the id's digits; the test's JSON.parse rounds it, so compare the text.
      expect(sub.raw.filter((t) => t.includes('"events"')).join("")).toContain('"key" : {"id" : 9007199254740993}');
      const [ins, upd, moved, arrived, del] = data(events);
      expect(ins).toMatchObject({ op: "INSERT", schema: "public", table: "docs", new: { title: "one", body: "b" }, old: null });
      expect(upd).toMatchObject({ op: "UPDATE", new: { title: "uno", body: "b" }, old: null });
      // A key change: the WAL holds the old key; it arrives as a delete of the old and an insert of the new.
      expect(moved).toMatchObject({ op: "DELETE", new: null });
      expect(arrived).toMatchObject({ op: "INSERT", key: { id: 2 }, new: { id: 2, title: "uno", body: "b" } });
      expect(del).toEqual({ op: "DELETE", schema: "public", table: "docs", key: { id: 2 }, new: null, old: { id: 2 } });
    } finally {
      sub.close();
    }
  });

  it("routes by a template column under REPLICA IDENTITY FULL: a row moving tenants leaves one channel and enters the other; old is the whole row", async () => {
    const [t1, t2] = await Promise.all([TestSubscriber.connect(worker.url, "notes:1"), TestSubscriber.connect(worker.url, "notes:2")]);
    try {
      await db.sql("insert into notes values (1, 1, 'a')");
      await db.sql("update notes set tenant = 2, body = 'moved' where id = 1");
      await db.sql("delete from notes where id = 1");
      const [e1, e2] = [await eventsOf(t1, 2), await eventsOf(t2, 2)];
      expect(e1.map((e) => e.event)).toEqual(["insert", "delete"]);
      expect(data(e1)[1]).toMatchObject({ op: "DELETE", old: { id: 1, tenant: 1, body: "a" } });
      expect(JSON.stringify(e1)).not.toContain("moved");
      expect(e2.map((e) => e.event)).toEqual(["insert", "delete"]);
      expect(data(e2)[1]).toEqual({ op: "DELETE", schema: "public", table: "notes", key: { id: 1 }, new: null, old: { id: 1, tenant: 2, body: "moved" } });
    } finally {
      t1.close();
      t2.close();
    }
  });

  it("refuses a template column a delete's WAL would not hold, and a table with no replica identity, saying how to fix it", async () => {
    await db.sql("create table routed (id int primary key, tenant int)");
    const refused = (await db.sql("select realtime.watch('routed', 'r:{tenant}')").catch((err: unknown) => err)) as { message: string; hint?: string };
    expect(refused.message).toMatch(/routes by column tenant, which the WAL does not hold for a deleted row/);
    expect(refused.hint).toMatch(/alter table public.routed replica identity full/);
    await db.sql("create table bare (a int)");
    await expect(db.sql("select realtime.watch('bare')")).rejects.toThrow(/has no primary key/);
    // Without a key but with REPLICA IDENTITY FULL, the whole row identifies it.
    await db.sql("select realtime.watch('keyless')");
    const sub = await TestSubscriber.connect(worker.url, "keyless");
    try {
      await db.sql("insert into keyless values (1, 'x')");
      await db.sql("delete from keyless where a = 1");
      const events = await eventsOf(sub, 2);
      expect(data(events).map((d) => [d.op, d.key])).toEqual([
        ["INSERT", { a: 1, b: "x" }],
        ["DELETE", { a: 1, b: "x" }],
      ]);
    } finally {
      sub.close();
    }
  });

  it("captures every writer: a COPY, a multi-row insert, a truncate", async () => {
    const sub = await TestSubscriber.connect(worker.url, "docs");
    try {
      const c = await db.client();
      await c.query("insert into docs select g, 'bulk ' || g, null from generate_series(10, 14) g");
      await c.query("copy docs (id, title) from program 'printf \"20\\tcopied\\n21\\tcopied too\\n\"'");
      await c.query("truncate docs");
      const events = await eventsOf(sub, 8);
      expect(events.map((e) => e.event)).toEqual(["insert", "insert", "insert", "insert", "insert", "insert", "insert", "truncate"]);
      expect(
        data(events)
          .slice(5, 7)
          .map((d) => d.new),
      ).toEqual([
        { id: 20, title: "copied", body: null },
        { id: 21, title: "copied too", body: null },
      ]);
      expect(new Set(events.map((e) => e.id)).size).toBe(8);
    } finally {
      sub.close();
    }
  });

  it("follows renames by itself: events carry the table's and columns' current names", async () => {
    const sub = await TestSubscriber.connect(worker.url, "docs");
    try {
      await db.sql("alter table docs rename column title to heading");
      await db.sql("alter table docs rename to documents");
      await db.sql("insert into documents values (30, 'renamed', null)");
      const [e] = await eventsOf(sub, 1);
      expect(e!.data).toMatchObject({ table: "documents", key: { id: 30 }, new: { id: 30, heading: "renamed", body: null } });
    } finally {
      sub.close();
      await db.sql("alter table documents rename to docs; alter table docs rename column heading to title");
    }
  });

  it("fills an unchanged TOASTed column from the retained row, and names it where the channel keeps no row", async () => {
    // Over 2 kB, stored out of line uncompressed (storage external): an update that leaves it alone does not log it.
    const big = "x".repeat(20_000);
    await db.sql("alter table pages alter column body set storage external; alter table attachments alter column body set storage external");
    const pages = await TestSubscriber.connect(worker.url, "pages");
    const atts = await TestSubscriber.connect(worker.url, "attachments");
    try {
      await db.sql("insert into pages values (1, 'first', $1)", [big]);
      await db.sql("update pages set title = 'second' where id = 1");
      await db.sql("insert into attachments values (1, $1)", [big]);
      await db.sql("update attachments set id = 1 where id = 1");
      const [, update] = data(await eventsOf(pages, 2));
      expect(update).toMatchObject({ op: "UPDATE", new: { id: 1, title: "second", body: big } });
      expect(update).not.toHaveProperty("unchanged");
      const joining = await TestSubscriber.connect(worker.url, "pages");
      const snapshot = await joining.until(() => joining.frames.find((f) => f.type === "snapshot"), "snapshot");
      expect((snapshot as { rows: SnapshotRow[] }).rows[0]!.row).toEqual({ id: 1, title: "second", body: big });
      joining.close();
      const [, bare] = data(await eventsOf(atts, 2));
      expect(bare).toEqual({ op: "UPDATE", schema: "public", table: "attachments", key: { id: 1 }, new: { id: 1 }, old: null, unchanged: ["body"] });
    } finally {
      pages.close();
      atts.close();
    }
  });

  it("sends realtime.publish() as a logical message, in commit order with the rows", async () => {
    const sub = await TestSubscriber.connect(worker.url, "docs");
    try {
      await db.sql("begin; insert into docs values (40, 'with', null); select realtime.publish('docs', 'note', '{\"big\": 9007199254740993}'); commit;");
      const events = await eventsOf(sub, 2);
      expect(events.map((e) => e.event)).toEqual(["insert", "note"]);
      expect(sub.raw.join("")).toContain('"data":{"big": 9007199254740993}');
    } finally {
      sub.close();
    }
  });
});

describe("publication capture under faults", () => {
  let proxy: FaultProxy;

  beforeAll(async () => {
    await relay.stop();
    proxy = await startFaultProxy(worker.url);
    await db.sql("create table ledger (channel text, n int, primary key (channel, n)); select realtime.watch('ledger', '{channel}')");
  });

  afterAll(async () => {
    await proxy?.close();
  });

  it("loses and duplicates nothing when the relay is SIGKILLed twice during a burst of row changes on 3 channels", async () => {
    await killTwiceDuringBurst({
      db,
      workerUrl: worker.url,
      proxy,
      channels: ["pub-crash-a", "pub-crash-b", "pub-crash-c"],
      perChannel: 1500,
      env: { RELAY_SOURCE: "publication" },
      ready: "streaming",
      table: "ledger",
    });
  });

  it("holds the slot while the Worker answers 500, then delivers everything once, in order", async () => {
    const sub = await TestSubscriber.connect(worker.url, "pub-outage");
    relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url, source: "publication", batchSize: 100 });
    try {
      await relayEvent(relay, "streaming", undefined, 60_000);
      proxy.mode = "error500";
      const failing = relayEvent(relay, "retry", () => true);
      await insertNumbered(db, "ledger", "pub-outage", 1, 300, 10);
      await failing;
      proxy.mode = "pass";
      expectExactlyOnceInOrder(await sub.eventCount(300, 60_000), "pub-outage", 300);
    } finally {
      sub.close();
      proxy.mode = "pass";
      await relay.stop();
    }
  });
});
