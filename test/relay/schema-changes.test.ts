/**
 * Schema changes on watched tables (docs/schema-changes.md): renaming a key column, a template
 * column or the table, adding, dropping and retyping columns, set schema, primary-key changes,
 * truncate and drop table leave the application's statements working, and later events carry the
 * table's current schema, table and key names, through the real relay and Worker, in both capture
 * modes. With the event triggers (the install run by a superuser, as the test harness does) and
 * without them (the install run by a non-superuser owner).
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { ChangeEvent, ChannelEvent, SnapshotFrame } from "../../protocol/index.ts";
import { installSchema } from "../../relay/install.ts";
import type { Relay } from "../../relay/relay.ts";
import { createDatabase, freePort } from "../../scripts/postgres.ts";
import { startDevStack } from "../support/dev.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

/** A connection that keeps every NOTICE and WARNING Postgres sent it. */
interface Conn {
  client: pg.Client;
  /** "WARNING: message (hint)", oldest first. */
  notices: string[];
  q<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]>;
}

const clients: pg.Client[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

async function connect(url: string): Promise<Conn> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {}); // databases are dropped under their connections at the end
  const notices: string[] = [];
  client.on("notice", (n) => notices.push(`${n.severity}: ${n.message}${n.hint ? ` (${n.hint})` : ""}`));
  await client.connect();
  clients.push(client);
  return { client, notices, q: async (text, values) => (await client.query(text, values)).rows };
}

/** A fresh database on the test Postgres, dropped after the file. Nothing installed yet. */
async function freshDatabase(label: string): Promise<{ name: string; url: string }> {
  const name = `t_${label}_${randomBytes(4).toString("hex")}`;
  const db = await createDatabase(inject("postgresUrl"), name);
  cleanups.push(() => db.drop());
  return { name, url: db.url };
}

/**
 * Drops `tables` unseen by the drop event trigger, as an install without event triggers (or from
 * before them) does: their watches are left holding dangling oids.
 */
async function dropUnseen(conn: Conn, tables: string): Promise<void> {
  const toggle = (how: string) =>
    `do $$ begin if exists (select from pg_event_trigger where evtname = 'realtime_follow_drop') then alter event trigger realtime_follow_drop ${how}; end if; end $$`;
  await conn.q(`${toggle("disable")}; drop table ${tables}; ${toggle("enable always")}`);
}

const change = (e: ChannelEvent) => e.data as ChangeEvent;
/** [event, schema, table, key] of each event: what these tests check names on. */
const named = (events: ChannelEvent[]) => events.map((e) => [e.event, change(e).schema, change(e).table, change(e).key]);

let worker: TestWorker;

beforeAll(async () => {
  worker = await startTestWorker();
});

afterAll(async () => {
  await Promise.allSettled(clients.map((c) => c.end()));
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await worker?.dispose();
});

describe("with event triggers (installed by a superuser)", () => {
  let admin: Conn; // migrations and installs
  let app: Conn; // the application's own long-lived connection: its cached plans must follow too
  let relay: Relay;

  beforeAll(async () => {
    const db = await freshDatabase("schema_et");
    admin = await connect(db.url);
    await installSchema(admin.client);
    app = await connect(db.url);
    relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
    cleanups.push(() => relay.stop());
  });

  /** Rows of realtime.outbox for `table` (by the name in the event): what a write captured. */
  const captured = async (table: string) =>
    (await admin.q<{ n: string }>("select count(*) as n from realtime.outbox where payload ->> 'table' = $1", [table]))[0]!.n;

  it("installs two event triggers that fire always, and capture functions without the per-statement guard", async () => {
    expect(await admin.q("select evtname, evtevent, evtenabled from pg_event_trigger order by 1")).toEqual([
      { evtname: "realtime_follow_ddl", evtevent: "ddl_command_end", evtenabled: "A" },
      { evtname: "realtime_follow_drop", evtevent: "sql_drop", evtenabled: "A" },
    ]);
    await admin.q("create table plain (id int primary key); select realtime.watch('plain')");
    const [fn] = await admin.q<{ src: string }>("select prosrc as src from pg_proc where proname = 'capture_' || 'plain'::regclass::oid");
    expect(fn!.src).not.toContain("pg_get_indexdef");
    expect(fn!.src).not.toContain("capture_sql_now");
    expect(fn!.src).toContain("TG_TABLE_NAME");
  });

  it("renaming a key column keeps writes working; events, and backfill, carry the new key name in key order", async () => {
    await admin.q("create table k1 (a int, b int, v text, primary key (b, a)); select realtime.watch('k1')");
    const sub = await TestSubscriber.connect(worker.url, "k1");
    try {
      await app.q("insert into k1 values (1, 10, 'x')");
      await admin.q("alter table k1 rename column a to a2");
      await app.q("insert into k1 values (2, 20, 'y')");
      await app.q("update k1 set v = 'yy' where a2 = 2");
      await app.q("delete from k1 where a2 = 1");
      expect(await admin.q("select realtime.backfill('k1') as n")).toEqual([{ n: "1" }]);
      const events = await sub.eventCount(5);
      expect(named(events)).toEqual([
        ["insert", "public", "k1", { b: 10, a: 1 }],
        ["insert", "public", "k1", { b: 20, a2: 2 }],
        ["update", "public", "k1", { b: 20, a2: 2 }],
        ["delete", "public", "k1", { b: 10, a2: 1 }],
        ["insert", "public", "k1", { b: 20, a2: 2 }],
      ]);
      expect(Object.keys(change(events[2]!).key)).toEqual(["b", "a2"]);
      expect((events[4]!.data as { backfill?: boolean }).backfill).toBe(true);
      expect(await admin.q("select key_columns from realtime.watches where tbl = 'k1'::regclass")).toEqual([{ key_columns: ["b", "a2"] }]);
    } finally {
      sub.close();
    }
  });

  it("renaming the table, moving it to another schema, renaming that schema: events carry the current names; a plain watch keeps its channel", async () => {
    await admin.q("create table t2 (id int primary key); select realtime.watch('t2')");
    const sub = await TestSubscriber.connect(worker.url, "t2");
    try {
      await app.q("insert into t2 values (1)");
      await admin.q("alter table t2 rename to t2_renamed");
      await app.q("insert into t2_renamed values (2)");
      await admin.q("create schema moved; alter table t2_renamed set schema moved");
      await app.q("insert into moved.t2_renamed values (3)");
      await admin.q("alter schema moved rename to moved2");
      await app.q("insert into moved2.t2_renamed values (4)");
      await app.q("truncate moved2.t2_renamed");
      expect(named(await sub.eventCount(5))).toEqual([
        ["insert", "public", "t2", { id: 1 }],
        ["insert", "public", "t2_renamed", { id: 2 }],
        ["insert", "moved", "t2_renamed", { id: 3 }],
        ["insert", "moved2", "t2_renamed", { id: 4 }],
        ["truncate", "moved2", "t2_renamed", {}],
      ]);
      expect(await admin.q("select channel, table_schema, table_name from realtime.watches where tbl = 'moved2.t2_renamed'::regclass")).toEqual([
        { channel: "t2", table_schema: "moved2", table_name: "t2_renamed" },
      ]);
    } finally {
      sub.close();
    }
  });

  it("a template column renamed: routing unchanged and the stored template names it; dropped: writes work, the watch is suspended with a WARNING until watched again", async () => {
    await admin.q(
      "create table items3 (id int primary key, tenant_id int not null, name text); select realtime.watch('items3', 'tmpl:{tenant_id}', retain => true)",
    );
    const [t1, t2] = await Promise.all([TestSubscriber.connect(worker.url, "tmpl:1"), TestSubscriber.connect(worker.url, "tmpl:2")]);
    try {
      await app.q("insert into items3 values (1, 1, 'a')");
      await admin.q("alter table items3 rename column tenant_id to tenant");
      expect(await admin.q("select channel from realtime.watches where tbl = 'items3'::regclass")).toEqual([{ channel: "tmpl:{tenant}" }]);
      await app.q("insert into items3 values (2, 1, 'b')");
      await app.q("update items3 set tenant = 2 where id = 1"); // leaves tmpl:1, enters tmpl:2
      const e1 = await t1.eventCount(3);
      expect(e1.map((e) => [e.event, change(e).key, change(e).new])).toEqual([
        ["insert", { id: 1 }, { id: 1, tenant_id: 1, name: "a" }],
        ["insert", { id: 2 }, { id: 2, tenant: 1, name: "b" }],
        ["delete", { id: 1 }, null],
      ]);
      expect((await t2.eventCount(1)).map((e) => [e.event, change(e).new])).toEqual([["insert", { id: 1, tenant: 2, name: "a" }]]);

      // NOT NULL dropped: a NULL routes nowhere; the write goes on, its event is left out with a WARNING.
      await admin.q("alter table items3 alter column tenant drop not null");
      app.notices.length = 0;
      const unrouted = await captured("items3");
      await app.q("insert into items3 values (3, null, 'c')");
      expect(app.notices.join("\n")).toMatch(/WARNING: realtime: this insert on items3 is not captured: its channel template gave NULL/);
      expect(await captured("items3")).toBe(unrouted);

      admin.notices.length = 0;
      await admin.q("alter table items3 drop column tenant");
      expect(admin.notices.join("\n")).toMatch(
        /WARNING: realtime: the changes of public.items3 are not captured: its channel template 'tmpl:\{tenant\}' needs column tenant/,
      );
      expect(admin.notices.join("\n")).toContain("select realtime.watch('public.items3', '<template>')");
      const [w] = await admin.q<{ suspended: string }>("select suspended from realtime.watches where tbl = 'items3'::regclass");
      expect(w!.suspended).toMatch(/needs column tenant/);
      expect(await admin.q("select tgname from pg_trigger where tgrelid = 'items3'::regclass")).toEqual([]);
      const before = await captured("items3");
      await app.q("insert into items3 values (4, 'd')");
      await app.q("update items3 set name = 'dd' where id = 4");
      expect(await captured("items3")).toBe(before);

      // Watching it again, with a template over columns it has, resumes capture.
      await admin.q("select realtime.watch('items3', 'tmpl:{id}')");
      const t4 = await TestSubscriber.connect(worker.url, "tmpl:4");
      try {
        await app.q("update items3 set name = 'dddd' where id = 4");
        expect((await t4.eventCount(1)).map((e) => [e.event, change(e).new])).toEqual([["update", { id: 4, name: "dddd" }]]);
      } finally {
        t4.close();
      }
    } finally {
      t1.close();
      t2.close();
    }
  });

  it("a primary key dropped then added as two statements: suspended in between (writes work, no events), then resumed by itself with the new key", async () => {
    await admin.q("create table pk (a int not null, b int not null, v text, constraint pk_pkey primary key (a)); select realtime.watch('pk')");
    const sub = await TestSubscriber.connect(worker.url, "pk");
    try {
      await app.q("insert into pk values (1, 1)");
      admin.notices.length = 0;
      await admin.q("alter table pk drop constraint pk_pkey");
      expect(admin.notices.join("\n")).toMatch(
        /WARNING: realtime: the changes of public.pk are not captured: public.pk has no primary key \(.*capture resumes by itself/,
      );
      await app.q("insert into pk values (2, 2)");
      await app.q("update pk set v = 'x'");
      await admin.q("alter table pk add primary key (b, a)");
      expect(admin.notices.at(-1)).toBe("NOTICE: realtime: capturing the changes of public.pk again");
      expect(await admin.q("select key_columns, suspended from realtime.watches where tbl = 'pk'::regclass")).toEqual([
        { key_columns: ["b", "a"], suspended: null },
      ]);
      await app.q("insert into pk values (3, 30)");
      // Nothing arrived for the writes while suspended: the next event after the first is this one.
      expect(named(await sub.eventCount(2))).toEqual([
        ["insert", "public", "pk", { a: 1 }],
        ["insert", "public", "pk", { b: 30, a: 3 }],
      ]);
    } finally {
      sub.close();
    }
  });

  it("drop table removes its watch and capture function; install and set_capture then succeed, and remove with a WARNING a watch whose table was dropped unseen", async () => {
    // A database of its own: the install must succeed whatever else the others left.
    const admin = await connect((await freshDatabase("schema_drop")).url);
    await installSchema(admin.client);
    await admin.q("create table gone (id int primary key); select realtime.watch('gone')");
    const [{ oid, fn }] = (await admin.q<{ oid: number; fn: string }>(
      "select tbl::oid::int as oid, capture_function as fn from realtime.watches where tbl = 'gone'::regclass",
    )) as [{ oid: number; fn: string }];
    await admin.q("drop table gone");
    await installSchema(admin.client);
    await admin.q("select realtime.set_capture('outbox')");
    expect(await admin.q("select * from realtime.watches where tbl::oid = $1", [oid])).toEqual([]);
    expect(await admin.q("select * from pg_proc where proname = $1", [fn])).toEqual([]);

    // Tables dropped while the drop trigger was off: their watches hold dangling oids.
    await admin.q(
      "create table unseen1 (id int primary key); create table unseen2 (id int primary key); select realtime.watch('unseen1'), realtime.watch('unseen2')",
    );
    await dropUnseen(admin, "unseen1, unseen2");
    expect((await admin.q("select table_name from realtime.watches where table_name like 'unseen%' order by 1")).length).toBe(2);
    admin.notices.length = 0;
    await installSchema(admin.client);
    await admin.q("select realtime.set_capture('outbox')");
    expect(admin.notices.filter((n) => n.includes("removed the watch"))).toEqual([
      expect.stringMatching(/^WARNING: realtime: removed the watch of public.unseen1, a table that was dropped/),
      expect.stringMatching(/^WARNING: realtime: removed the watch of public.unseen2, a table that was dropped/),
    ]);
    expect(await admin.q("select * from realtime.watches where table_name like 'unseen%'")).toEqual([]);
    expect(
      await admin.q(
        "select proname from pg_proc where proname like 'capture\\_%' and not exists (select from realtime.watches where capture_function = proname) and proname not in ('capture_query', 'capture_sql_now')",
      ),
    ).toEqual([]);
  });

  it("unwatch() takes a name (also of a table since dropped), a regclass or an oid, and its errors list the watched tables", async () => {
    await admin.q(
      "create table u1 (id int primary key); create table u2 (id int primary key); create table u3 (id int primary key); create table u4 (id int primary key)",
    );
    await admin.q("select realtime.watch('u1'), realtime.watch('u2'), realtime.watch('u3'), realtime.watch('u4')");
    // 'u1' (unknown) resolves to unwatch(text), the string category being preferred; a regclass to unwatch(regclass).
    await admin.q("select realtime.unwatch('u1')");
    await admin.q("select realtime.unwatch('public.u2'::regclass)");
    const [{ oid }] = (await admin.q<{ oid: number }>("select 'u3'::regclass::oid::int as oid")) as [{ oid: number }];
    await dropUnseen(admin, "u3, u4");
    await admin.q("select realtime.unwatch($1::int)", [oid]); // the oid of a dropped table
    await admin.q("select realtime.unwatch('u4')"); // the name of a dropped table
    expect(await admin.q("select * from realtime.watches where table_name like 'u_'")).toEqual([]);
    expect(await admin.q("select tgname from pg_trigger where tgname like 'realtime%' and tgrelid in ('u1'::regclass, 'u2'::regclass)")).toEqual([]);

    const failure = (sql: string) =>
      admin.q(sql).then(
        () => {
          throw new Error(`${sql} succeeded`);
        },
        (err: pg.DatabaseError) => `${err.message} (${err.hint})`,
      );
    expect(await failure("select realtime.unwatch('nope')")).toMatch(/^realtime.unwatch: no table or watch is named 'nope' \(Watched tables: .*public.k1.*\)$/);
    expect(await failure("select realtime.unwatch(2000000000)")).toMatch(
      /^realtime.unwatch: no table has oid 2000000000, and no watch names it \(Watched tables: /,
    );
    expect(await failure("select realtime.unwatch('a.b.c')")).toMatch(/is not a table name \(Name it as 'table' or 'schema.table'/);
    expect(await failure("select realtime.unwatch('bad name')")).toMatch(/'bad name' is not a table name/);
  });

  it("never makes the DDL fail: an error while following it becomes a WARNING, and the table's capture triggers are dropped; the next install resumes it", async () => {
    await admin.q("create table fragile (id int primary key, v int); select realtime.watch('fragile')");
    const sub = await TestSubscriber.connect(worker.url, "fragile");
    try {
      // Sabotage the generator; the install restores it below.
      await admin.q(`create or replace function realtime.capture_query(tbl regclass, op text, template text, keys text[], retain boolean, schema_expr text, table_expr text)
                     returns text language plpgsql as $$ begin raise exception 'sabotaged'; end $$`);
      admin.notices.length = 0;
      await admin.q("alter table fragile rename column id to ident");
      expect(admin.notices).toEqual([expect.stringMatching(/^WARNING: realtime: the changes of public.fragile are not captured: sabotaged/)]);
      expect(await admin.q("select tgname from pg_trigger where tgrelid = 'fragile'::regclass")).toEqual([]);
      await app.q("insert into fragile values (1, 1)");
      await installSchema(admin.client);
      expect(await admin.q("select suspended from realtime.watches where tbl = 'fragile'::regclass")).toEqual([{ suspended: null }]);
      await app.q("insert into fragile values (2, 2)");
      expect(named(await sub.eventCount(1))).toEqual([["insert", "public", "fragile", { ident: 2 }]]);
    } finally {
      sub.close();
      await installSchema(admin.client);
    }
  });

  it("retained rows stay under the names they were captured with: forget_retained() and backfill() rebuild them under the new ones", async () => {
    await admin.q(
      "create table kept (id int primary key, v text); insert into kept values (1, 'a'); select realtime.watch('kept', retain => true); select realtime.backfill('kept')",
    );
    await admin.q("alter table kept rename to kept2");
    await app.q("update kept2 set v = 'b'");
    const rows = async () => {
      const sub = await TestSubscriber.connect(worker.url, "kept");
      try {
        const snapshot = await sub.until(() => sub.frames.find((f): f is SnapshotFrame => f.type === "snapshot"), "a snapshot");
        return snapshot.rows.map((r) => [r.table, r.key, r.row]).sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));
      } finally {
        sub.close();
      }
    };
    const seen = await TestSubscriber.connect(worker.url, "kept");
    try {
      await app.q("insert into kept2 values (2, 'marker')");
      await seen.until(() => seen.events.some((e) => change(e).new?.v === "marker"), "the marker row");
    } finally {
      seen.close();
    }
    expect(await rows()).toEqual([
      ["kept", { id: 1 }, { id: 1, v: "a" }],
      ["kept2", { id: 1 }, { id: 1, v: "b" }],
      ["kept2", { id: 2 }, { id: 2, v: "marker" }],
    ]);
    const done = await TestSubscriber.connect(worker.url, "kept");
    try {
      await admin.q("select realtime.forget_retained('kept', 'public', 'kept'); select realtime.backfill('kept2')");
      await done.until(() => done.events.filter((e) => (e.data as { backfill?: boolean }).backfill).length === 2 || undefined, "the backfill");
    } finally {
      done.close();
    }
    expect(await rows()).toEqual([
      ["kept2", { id: 1 }, { id: 1, v: "b" }],
      ["kept2", { id: 2 }, { id: 2, v: "marker" }],
    ]);
  });
});

describe.each(["outbox", "wal"] as const)("every schema change in turn, %s capture", (mode) => {
  let admin: Conn;
  let app: Conn;
  let relay: Relay;

  beforeAll(async () => {
    const db = await freshDatabase(`schema_seq_${mode}`);
    admin = await connect(db.url);
    await installSchema(admin.client);
    app = await connect(db.url);
    if (mode === "wal") {
      const [{ wal_level }] = (await admin.q<{ wal_level: string }>("show wal_level")) as [{ wal_level: string }];
      if (wal_level !== "logical") throw new Error(`wal capture needs wal_level = logical, and the test Postgres has ${wal_level}`);
    }
    await admin.q(`create table items (id int primary key, tenant_id int not null, name text, n int not null default 0);
                   select realtime.watch('items', '${mode}:{tenant_id}', retain => true);
                   create table notes (id int primary key);
                   select realtime.watch('notes', '${mode}-notes')`);
    relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, ...(mode === "wal" ? { source: "wal" as const } : {}) });
    cleanups.push(() => relay.stop());
    // A wal relay creates its slot, then switches capture (set_capture regenerates the watches).
    if (mode === "wal") await relayEvent(relay, "streaming");
    expect((await admin.q("select capture from realtime.installation"))[0]).toEqual({ capture: mode });
  });

  it("keeps every application statement working, and names every event as the table is when it happens", { timeout: 180_000 }, async () => {
    const items = await TestSubscriber.connect(worker.url, `${mode}:1`);
    const notes = await TestSubscriber.connect(worker.url, `${mode}-notes`);
    let seenItems = 0;
    let seenNotes = 0;
    /** The events that arrived since the last call, once there are `n` of them. */
    const next = async (sub: TestSubscriber, n: number) => {
      const from = sub === items ? seenItems : seenNotes;
      const events = (await sub.eventCount(from + n, 60_000)).slice(from, from + n);
      if (sub === items) seenItems += n;
      else seenNotes += n;
      return events;
    };
    /** A migration: its statements, then the install run again (it must succeed at every step). */
    const migrate = async (sql: string) => {
      await admin.q(sql);
      await installSchema(admin.client);
      expect(admin.notices.filter((n) => n.startsWith("WARNING"))).toEqual([]);
    };
    try {
      await app.q("insert into items (id, tenant_id, name) values (1, 1, 'a')");
      await app.q("insert into notes values (1)");
      expect(named(await next(items, 1))).toEqual([["insert", "public", "items", { id: 1 }]]);
      expect(named(await next(notes, 1))).toEqual([["insert", "public", "notes", { id: 1 }]]);

      // 1. A key column renamed.
      await migrate("alter table items rename column id to ident");
      await app.q("update items set n = 1 where ident = 1");
      expect(named(await next(items, 1))).toEqual([["update", "public", "items", { ident: 1 }]]);

      // 2. The template column renamed: same channel, the stored template follows.
      await migrate("alter table items rename column tenant_id to tenant");
      expect(await admin.q("select channel from realtime.watches where tbl = 'items'::regclass")).toEqual([{ channel: `${mode}:{tenant}` }]);
      await app.q("insert into items (ident, tenant, name) values (2, 1, 'b')");
      const [renamedTemplate] = await next(items, 1);
      expect(named([renamedTemplate!])).toEqual([["insert", "public", "items", { ident: 2 }]]);
      expect(change(renamedTemplate!).new).toEqual({ ident: 2, tenant: 1, name: "b", n: 0 });

      // 3. The tables renamed: the plain watch keeps its channel.
      await migrate("alter table items rename to things; alter table notes rename to memos");
      await app.q("delete from things where ident = 2");
      await app.q("insert into memos values (2)");
      expect(named(await next(items, 1))).toEqual([["delete", "public", "things", { ident: 2 }]]);
      expect(named(await next(notes, 1))).toEqual([["insert", "public", "memos", { id: 2 }]]);

      // 4. A column added.
      await migrate("alter table things add column extra text not null default 'x'");
      await app.q("insert into things (ident, tenant, name) values (3, 1, 'c')");
      const [added] = await next(items, 1);
      expect(change(added!).new).toEqual({ ident: 3, tenant: 1, name: "c", n: 0, extra: "x" });

      // 5. A column dropped.
      await migrate("alter table things drop column name");
      await app.q("update things set n = n + 1 where ident = 3");
      const [dropped] = await next(items, 1);
      expect(named([dropped!])).toEqual([["update", "public", "things", { ident: 3 }]]);
      expect(change(dropped!).new).toEqual({ ident: 3, tenant: 1, n: 1, extra: "x" });

      // 6. Columns retyped: the key, the template column, another.
      await migrate("alter table things alter column ident type bigint, alter column tenant type text, alter column n type numeric");
      await app.q("insert into things (ident, tenant, n) values (4, '1', 1.5)");
      const [retyped] = await next(items, 1);
      expect(named([retyped!])).toEqual([["insert", "public", "things", { ident: 4 }]]);
      expect(change(retyped!).new).toEqual({ ident: 4, tenant: "1", n: 1.5, extra: "x" });

      // 7. Both tables moved to another schema.
      await migrate("create schema moved; alter table things set schema moved; alter table memos set schema moved");
      await app.q("update moved.things set n = 2 where ident = 4");
      await app.q("insert into moved.memos values (3)");
      expect(named(await next(items, 1))).toEqual([["update", "moved", "things", { ident: 4 }]]);
      expect(named(await next(notes, 1))).toEqual([["insert", "moved", "memos", { id: 3 }]]);

      // 8. Truncate: an event for the plain watch (a template has no rows to route it by).
      await app.q("truncate moved.things");
      await app.q("truncate moved.memos");
      await app.q("insert into moved.things (ident, tenant) values (5, '1')");
      expect(named(await next(notes, 1))).toEqual([["truncate", "moved", "memos", {}]]);
      expect(named(await next(items, 1))).toEqual([["insert", "moved", "things", { ident: 5 }]]);

      // 9. Both tables dropped: their watches go with them; a table created in their place can be watched.
      await migrate("drop table moved.things; drop table moved.memos");
      expect(await admin.q("select * from realtime.watches")).toEqual([]);
      await migrate(`create table moved.things (ident int primary key, tenant text not null); select realtime.watch('moved.things', '${mode}:{tenant}')`);
      await app.q("insert into moved.things values (6, '1')");
      expect(named(await next(items, 1))).toEqual([["insert", "moved", "things", { ident: 6 }]]);
    } finally {
      items.close();
      notes.close();
    }
  });
});

describe("without event triggers (installed by a non-superuser owner)", () => {
  let owner: Conn;
  let role: string;
  let dbName: string;

  beforeAll(async () => {
    const db = await freshDatabase("schema_noet");
    dbName = db.name;
    role = `rt_owner_${randomBytes(4).toString("hex")}`;
    const superuser = await connect(inject("postgresUrl"));
    const password = randomBytes(12).toString("hex");
    await superuser.q(`create role ${role} login password '${password}'`);
    await superuser.q(`alter database ${db.name} owner to ${role}`);
    cleanups.unshift(async () => {
      const c = await connect(inject("postgresUrl"));
      await c.q(`drop database if exists ${dbName} with (force)`);
      await c.q(`drop role if exists ${role}`);
    });
    const url = new URL(db.url);
    url.username = role;
    url.password = password;
    owner = await connect(url.toString());
    await installSchema(owner.client);
  });

  it("says so in a NOTICE and installs no event trigger; the capture functions carry the guard", async () => {
    expect(owner.notices.join("\n")).toMatch(
      /NOTICE: realtime: installed without event triggers: creating them needs a superuser, and rt_owner_\w+ is not one/,
    );
    expect(await owner.q("select evtname from pg_event_trigger")).toEqual([]);
    await owner.q("create table g (id int primary key); select realtime.watch('g')");
    const [fn] = await owner.q<{ src: string }>("select prosrc as src from pg_proc where proname = 'capture_' || 'g'::regclass::oid");
    expect(fn!.src).toContain("pg_catalog.pg_get_indexdef");
  });

  it("renames never break writes, events carry the current names, a lost key or template column skips capture with a WARNING, and the install regenerates", async () => {
    await owner.q(
      "create table items (id int primary key, tenant_id int not null, name text); select realtime.watch('items', 'tenant:{tenant_id}', retain => true)",
    );
    const events = async () =>
      (
        await owner.q<{ channel: string; event: string; retain: boolean; table: string; schema: string; key: Record<string, unknown> }>(
          "select channel, event, retain, payload ->> 'schema' as schema, payload ->> 'table' as table, payload -> 'key' as key from realtime.outbox order by id",
        )
      ).map((r) => [r.channel, r.event, r.retain, r.schema, r.table, r.key]);
    await owner.q("insert into items values (1, 1, 'a')");
    await owner.q("alter table items rename column id to ident");
    await owner.q("insert into items values (2, 1, 'b')");
    await owner.q("alter table items rename column tenant_id to tenant");
    await owner.q("update items set name = 'bb' where ident = 2");
    await owner.q("alter table items rename to things");
    await owner.q("create schema other; alter table things set schema other");
    await owner.q("update other.things set tenant = 2 where ident = 1");
    await owner.q("delete from other.things where ident = 2");
    expect(await events()).toEqual([
      ["tenant:1", "insert", true, "public", "items", { id: 1 }],
      ["tenant:1", "insert", true, "public", "items", { ident: 2 }],
      ["tenant:1", "update", true, "public", "items", { ident: 2 }],
      ["tenant:1", "delete", true, "other", "things", { ident: 1 }],
      ["tenant:2", "insert", true, "other", "things", { ident: 1 }],
      ["tenant:1", "delete", true, "other", "things", { ident: 2 }],
    ]);
    // backfill() reads the catalog as it is now too.
    expect(await owner.q("select realtime.backfill('other.things') as n")).toEqual([{ n: "1" }]);

    // No primary key: the write works, the statement sends no event, and says why.
    await owner.q("delete from realtime.outbox");
    owner.notices.length = 0;
    await owner.q("alter table other.things drop constraint items_pkey");
    await owner.q("insert into other.things values (3, 1, 'c')");
    expect(owner.notices).toEqual([expect.stringMatching(/^WARNING: realtime: this insert on other.things sends no events: it has no primary key/)]);
    await owner.q("alter table other.things add primary key (ident)");
    await owner.q("insert into other.things values (4, 1, 'd')");
    // A template column dropped: the same.
    await owner.q("alter table other.things drop column tenant");
    owner.notices.length = 0;
    await owner.q("insert into other.things values (5, 'e')");
    expect(owner.notices).toEqual([expect.stringMatching(/a column of its channel template 'tenant:\{tenant_id\}' was dropped/)]);
    expect(await events()).toEqual([["tenant:1", "insert", true, "other", "things", { ident: 4 }]]);

    // The install brings the watch in line: suspended (template column gone), triggers dropped.
    owner.notices.length = 0;
    await installSchema(owner.client);
    expect(owner.notices.join("\n")).toMatch(
      /WARNING: realtime: the changes of other.things are not captured: its channel template 'tenant:\{tenant_id\}' needs column tenant_id/,
    );
    expect(await owner.q("select tgname from pg_trigger where tgrelid = 'other.things'::regclass")).toEqual([]);
    await owner.q("select realtime.watch('other.things', 'named:{name}')");
    const [fn] = await owner.q<{ src: string }>("select prosrc as src from pg_proc where proname = 'capture_' || 'other.things'::regclass::oid");
    expect(fn!.src).toMatch(/pg_get_indexdef\(\d+::pg_catalog.oid, 1, true\) is distinct from 'ident'\n[^;]*is distinct from '\{name\}'::text\[\] then/);
    await owner.q("insert into other.things values (6, 'f')");
    expect((await events()).at(-1)).toEqual(["named:f", "insert", false, "other", "things", { ident: 6 }]);
  });

  it("the install removes, with a WARNING naming it, the watch of a table dropped since; unwatch() finds one by name before that", async () => {
    await owner.q("create table d1 (id int primary key); create table d2 (id int primary key); select realtime.watch('d1'), realtime.watch('d2')");
    const oids = (await owner.q<{ oid: number }>("select tbl::oid::int as oid from realtime.watches where tbl in ('d1'::regclass, 'd2'::regclass)")).map(
      (r) => r.oid,
    );
    await owner.q("drop table d1; drop table d2");
    await owner.q("select realtime.unwatch('public.d2')");
    owner.notices.length = 0;
    await installSchema(owner.client);
    expect(owner.notices.filter((n) => n.startsWith("WARNING"))).toEqual([
      expect.stringMatching(/^WARNING: realtime: removed the watch of public.d1, a table that was dropped/),
    ]);
    expect(await owner.q("select * from realtime.watches where tbl::oid = any ($1::oid[])", [oids])).toEqual([]);
  });
});

describe("npm run dev", () => {
  it("starts on a database that holds the watch of a dropped table, and says it removed it", { timeout: 180_000 }, async () => {
    const db = await freshDatabase("schema_dev");
    const admin = await connect(db.url);
    await installSchema(admin.client);
    await admin.q("create table old_todos (id int primary key); select realtime.watch('old_todos')");
    // Dropped unseen by the event triggers (an install without them, or before this version).
    await dropUnseen(admin, "old_todos");
    const dev = startDevStack({ PORT: String(await freePort()), DATABASE_URL: db.url });
    try {
      await dev.until((out) => /\nrelay: \S+ \(capture: \w+\)\n/.test(out) || undefined, "the stack to start", 120_000);
      expect(dev.output).toContain("removed the watch of public.old_todos, a table that was dropped");
      expect(await admin.q("select tbl::text from realtime.watches")).toEqual([{ tbl: "todos" }]);
      dev.child.kill("SIGTERM");
      expect(await dev.exited).toBe(0);
    } finally {
      dev.cleanup();
    }
  });
});
