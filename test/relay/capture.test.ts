/**
 * Change capture through the real relay and the real Worker: what watch() and publish() write,
 * and what a subscriber receives.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChangeEvent } from "../../protocol/index.ts";
import type { Relay } from "../../relay/relay.ts";
import { TODOS_DDL } from "../../scripts/demo-api.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;
let relay: Relay;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("capture"), startTestWorker()]);
  await db.sql(TODOS_DDL);
  await db.sql(`
    select realtime.watch('todos');
    create table items (tenant_id int not null, id int not null, name text, primary key (tenant_id, id));
    select realtime.watch('items', 'tenant:{tenant_id}');
  `);
  relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
});

afterAll(async () => {
  await relay?.stop();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

describe("watch()", () => {
  it("turns INSERT, UPDATE and DELETE into insert, update and delete events with {op, schema, table, key, new, old}", async () => {
    const sub = await TestSubscriber.connect(worker.url, "todos");
    try {
      const { id } = (await db.sql<{ id: string }>("insert into todos (title) values ('write tests') returning id"))[0]!;
      await db.sql("update todos set done = true where id = $1", [id]);
      await db.sql("delete from todos where id = $1", [id]);
      const events = await sub.eventCount(3);
      expect(events.map((e) => e.event)).toEqual(["insert", "update", "delete"]);
      const [ins, upd, del] = events.map((e) => e.data as ChangeEvent);
      expect(ins).toMatchObject({ op: "INSERT", schema: "public", table: "todos", key: { id: Number(id) }, old: null });
      expect(ins!.new).toMatchObject({ id: Number(id), title: "write tests", done: false });
      expect(upd).toMatchObject({ op: "UPDATE", key: { id: Number(id) }, new: { done: true }, old: { done: false } });
      expect(del).toMatchObject({ op: "DELETE", key: { id: Number(id) }, new: null, old: { id: Number(id), done: true } });
      // seq is per channel, gapless from the first event this socket saw.
      expect(events.map((e) => e.seq)).toEqual([events[0]!.seq, events[0]!.seq + 1, events[0]!.seq + 2]);
    } finally {
      sub.close();
    }
  });

  it("routes by channel template: tenant 1 sees its rows only, and a row moving tenants leaves one channel and enters the other", async () => {
    const [t1, t2, t3] = (await Promise.all(["tenant:1", "tenant:2", "tenant:3"].map((c) => TestSubscriber.connect(worker.url, c)))) as [
      TestSubscriber,
      TestSubscriber,
      TestSubscriber,
    ];
    try {
      await db.sql("insert into items values (1, 1, 'one'), (2, 1, 'two')");
      await db.sql("update items set tenant_id = 3, name = 'moved' where tenant_id = 2");
      await db.sql("update items set name = 'renamed' where tenant_id = 1");
      const e1 = await t1.eventCount(2);
      const e2 = await t2.eventCount(2);
      const e3 = await t3.eventCount(1);
      expect(e1.map((e) => [e.event, (e.data as ChangeEvent).new?.name])).toEqual([
        ["insert", "one"],
        ["update", "renamed"],
      ]);
      expect(e2.map((e) => e.event)).toEqual(["insert", "delete"]);
      // The old tenant never sees the row's new contents.
      expect(JSON.stringify(e2)).not.toContain("moved");
      expect(e3.map((e) => [e.event, (e.data as ChangeEvent).new])).toEqual([["insert", { tenant_id: 3, id: 1, name: "moved" }]]);
    } finally {
      for (const s of [t1, t2, t3]) s.close();
    }
  });

  it("delivers a 1 MB row, inserted and then updated (a 2 MB event), byte for byte", async () => {
    const sub = await TestSubscriber.connect(worker.url, "todos");
    try {
      const title = "é".repeat(250_000) + "x".repeat(500_000); // 1,000,000 bytes of UTF-8
      const { id } = (await db.sql<{ id: string }>("insert into todos (title) values ($1) returning id", [title]))[0]!;
      await db.sql("update todos set title = $2 where id = $1", [id, `${title}!`]);
      const events = await sub.eventCount(2, 60_000);
      expect((events[0]!.data as ChangeEvent<{ title: string }>).new!.title).toBe(title);
      expect((events[1]!.data as ChangeEvent<{ title: string }>).new!.title).toBe(`${title}!`);
      expect((events[1]!.data as ChangeEvent<{ title: string }>).old!.title).toBe(title);
    } finally {
      sub.close();
    }
  });

  it("captures whole rows even when columns are named like the trigger's aliases (n, o, nj, oj, new, old)", async () => {
    await db.sql(`create table awkward (id int primary key, n int, o int, nj text, oj text, "new" text, "old" text);
                  select realtime.watch('awkward')`);
    const sub = await TestSubscriber.connect(worker.url, "awkward");
    try {
      await db.sql("insert into awkward values (1, 2, 3, 'a', 'b', 'c', 'd')");
      await db.sql("update awkward set n = 20 where id = 1");
      const [ins, upd] = await sub.eventCount(2);
      expect((ins!.data as ChangeEvent).new).toEqual({ id: 1, n: 2, o: 3, nj: "a", oj: "b", new: "c", old: "d" });
      expect((upd!.data as ChangeEvent).new).toEqual({ id: 1, n: 20, o: 3, nj: "a", oj: "b", new: "c", old: "d" });
      expect((upd!.data as ChangeEvent).old).toEqual({ id: 1, n: 2, o: 3, nj: "a", oj: "b", new: "c", old: "d" });
    } finally {
      sub.close();
    }
  });

  it("refuses a table without a primary key, and a template naming a missing column, with a hint", async () => {
    await db.sql("create table nokey (a int)");
    await expect(db.sql("select realtime.watch('nokey')")).rejects.toThrow(/nokey has no primary key/);
    await expect(db.sql("select realtime.watch('todos', 'x:{nope}')")).rejects.toThrow(/names column nope/);
    await expect(db.sql("select realtime.watch('todos', 'has space')")).rejects.toThrow(/is not valid/);
  });

  it("keeps a write whose template column is NULL or makes no valid channel name, and leaves its event out with a WARNING", async () => {
    await db.sql("create table maybe (id int primary key, t text); select realtime.watch('maybe', 't:{t}')");
    const c = await db.client();
    const warnings: string[] = [];
    c.on("notice", (n) => warnings.push(`${n.severity}: ${n.message}`));
    await c.query("insert into maybe values (1, null), (2, 'has space'), (3, 'fine')");
    expect(await db.sql("select id from maybe order by id")).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
    expect(warnings).toEqual([
      "WARNING: realtime: this insert on maybe is not captured: its channel template gave NULL (a column the template names is NULL), which is not a channel name",
      "WARNING: realtime: this insert on maybe is not captured: its channel template gave 't:has space', which is not a channel name",
    ]);
    // The routable row is captured, the others are not.
    expect(await db.sql("select channel from realtime.outbox where payload->>'table' = 'maybe'")).toEqual([{ channel: "t:fine" }]);
    // An update that leaves the row routable again is captured as its arrival there.
    await c.query("update maybe set t = 'back' where id = 1");
    expect(await db.sql("select channel, event from realtime.outbox where payload->>'table' = 'maybe' order by id")).toEqual([
      { channel: "t:fine", event: "insert" },
      { channel: "t:back", event: "insert" },
    ]);
  });

  it("marks the events of a watch with retain => true, and backfill() writes the existing rows (refusing an unwatched table)", async () => {
    await db.sql("create table kept (id int primary key, v text); insert into kept values (1, 'old'), (2, 'older')");
    await expect(db.sql("select realtime.backfill('kept')")).rejects.toThrow(/kept is not watched/);
    await db.sql("select realtime.watch('kept', retain => true)");
    expect(await db.sql("select realtime.backfill('kept') as n")).toEqual([{ n: "2" }]);
    await db.sql("insert into kept values (3, 'new')");
    const rows = await db.sql<{ event: string; retain: boolean; backfill: boolean | null }>(
      "select event, retain, (payload->>'backfill')::boolean as backfill from realtime.outbox where channel = 'kept' order by id",
    );
    expect(rows).toEqual([
      { event: "insert", retain: true, backfill: true },
      { event: "insert", retain: true, backfill: true },
      { event: "insert", retain: true, backfill: null },
    ]);
    // watch() without retain turns it off again.
    await db.sql("select realtime.watch('kept')");
    await db.sql("insert into kept values (4, 'plain')");
    expect((await db.sql<{ retain: boolean }>("select retain from realtime.outbox where channel = 'kept' order by id desc limit 1"))[0]!.retain).toBe(false);
  });

  it.each([
    ["a key checked row by row (updates captured per row)", "primary key", "for each row"],
    ["a deferrable key (updates captured per statement: every delete before any insert)", "primary key deferrable initially deferred", "for each statement"],
  ])("keeps what the events say equal to the table when updates move keys, with %s", async (_, key, level) => {
    const table = level === "for each row" ? "shift_row" : "shift_stmt";
    await db.sql(
      `create table ${table} (id int ${key}, v int not null); insert into ${table} select g, g from generate_series(1, 6) g; select realtime.watch('${table}', retain => true)`,
    );
    const tgtype = (
      await db.sql<{ tgtype: number }>("select tgtype from pg_trigger where tgrelid = $1::regclass and tgname = 'realtime_capture_update'", [table])
    )[0]!.tgtype;
    expect((tgtype & 1) === 1 ? "for each row" : "for each statement").toBe(level);
    const sub = await TestSubscriber.connect(worker.url, table);
    try {
      // Shifts and (where the key allows it) a swap, in single statements, with other updates.
      const statements = [`update ${table} set id = id + 10`, `update ${table} set id = id - 10, v = v + 1 where id > 13`, `update ${table} set v = v * 2`];
      if (level === "for each statement") statements.push(`update ${table} set id = case id when 11 then 12 when 12 then 11 else id end`);
      for (const statement of statements) await db.sql(statement);
      const count = (await db.sql<{ n: number }>("select count(*)::int as n from realtime.outbox where channel = $1", [table]))[0]!.n;
      const events = await sub.eventCount(count);
      // Replaying the events in order on an empty copy gives the table as it is.
      const rows = new Map<number, { id: number; v: number }>();
      for (const e of events) {
        const d = e.data as ChangeEvent<{ id: number; v: number }>;
        if (d.op === "DELETE") rows.delete((d.key as { id: number }).id);
        else rows.set(d.new!.id, d.new!);
      }
      const table_ = await db.sql<{ id: number; v: number }>(`select id, v from ${table} order by id`);
      // (The first statement moves every row, so its inserts bring each row in: no backfill needed.)
      const replayed = [...rows.values()].sort((a, b) => a.id - b.id);
      expect(replayed).toEqual(table_);
    } finally {
      sub.close();
    }
  });

  it("stops capturing after unwatch()", async () => {
    await db.sql("create table brief (id int primary key); select realtime.watch('brief')");
    await db.sql("insert into brief values (1)");
    await db.sql("select realtime.unwatch('brief')");
    await db.sql("insert into brief values (2)");
    const rows = await db.sql<{ key: unknown }>("select payload->'key' as key from realtime.outbox where channel = 'brief' order by id");
    expect(rows.map((r) => r.key)).toEqual([{ id: 1 }]);
    expect(await db.sql("select * from pg_trigger where tgrelid = 'brief'::regclass")).toEqual([]);
  });
});

describe("realtime.publish()", () => {
  it("delivers an application event with its payload", async () => {
    const sub = await TestSubscriber.connect(worker.url, "orders");
    try {
      await db.sql("select realtime.publish('orders', 'order.created', $1::jsonb)", [JSON.stringify({ id: 7, total: 12.5 })]);
      const [e] = await sub.eventCount(1);
      expect(e).toMatchObject({ event: "order.created", data: { id: 7, total: 12.5 } });
      expect(e!.id).toMatch(/^[0-9a-f]{12}-\d+$/);
    } finally {
      sub.close();
    }
  });

  it("refuses a bad channel or event name with a clear error", async () => {
    await expect(db.sql("select realtime.publish('a b', 'e')")).rejects.toThrow(/not a valid channel name/);
    await expect(db.sql("select realtime.publish('ok', 'bad event')")).rejects.toThrow(/not a valid event name/);
  });
});

describe("install", () => {
  it("upgrades an install whose outbox payload is jsonb (before 0.1): converts it and regenerates every watch", async () => {
    const upgrade = await testDatabase("upgrade");
    try {
      await upgrade.sql(`create table things (id int primary key, name text); select realtime.watch('things')`);
      await upgrade.sql(`alter table realtime.outbox alter column payload drop default;
                         alter table realtime.outbox alter column payload type jsonb using payload::jsonb;
                         alter table realtime.outbox alter column payload set default 'null'`);
      const { installSchema } = await import("../../relay/install.ts");
      await installSchema(await upgrade.client());
      const [col] = await upgrade.sql<{ type: string }>(
        "select atttypid::regtype::text as type from pg_attribute where attrelid = 'realtime.outbox'::regclass and attname = 'payload'",
      );
      expect(col!.type).toBe("json");
      await upgrade.sql("insert into things values (1, 'after upgrade')");
      const [row] = await upgrade.sql<{ payload: { new: { name: string } } }>("select payload from realtime.outbox where channel = 'things'");
      expect(row!.payload.new.name).toBe("after upgrade");
    } finally {
      await upgrade.drop();
    }
  });

  it("is idempotent: installing again changes no object and keeps watches, cursors and the install id", async () => {
    const catalog = () =>
      db.sql(`select p.proname as name, md5(pg_get_functiondef(p.oid)) as def from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname = 'realtime' union all
              select c.relname, c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'realtime'
              union all select tgname || ' on ' || tgrelid::regclass::text, tgfoid::regproc::text from pg_trigger where tgname like 'realtime%'
              union all select 'install', install_id from realtime.installation
              union all select 'watch ' || tbl::text, channel from realtime.watches
              order by 1, 2`);
    const before = await catalog();
    const { installSchema } = await import("../../relay/install.ts");
    const client = await db.client();
    await installSchema(client);
    await installSchema(client);
    expect(await catalog()).toEqual(before);
  });
});
