/**
 * The relay's contract: NOTIFY forwarding, a cursor that moves only after a 2xx, reconnecting
 * after its backend is killed, and a CLI that refuses bad configuration with one clear line.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TODOS_DDL } from "../../scripts/demo-api.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { startFaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, spawnCli, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, TEST_SECRET, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("relay"), startTestWorker()]);
  await db.sql(TODOS_DDL);
  await db.sql(`
    select realtime.watch('todos');
    -- A typical application's own pg_notify trigger, unchanged.
    create or replace function notify_data_change() returns trigger as $$
    begin
      perform pg_notify('data_changes', json_build_object('operation', TG_OP, 'table', TG_TABLE_NAME, 'id', NEW.id, 'data', row_to_json(NEW))::text);
      return NEW;
    end; $$ language plpgsql;
    create table users (id serial primary key, name text);
    create trigger users_change_trigger after insert on users for each row execute procedure notify_data_change();
  `);
});

afterAll(async () => {
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

async function cursorRow(): Promise<{ done: string; after_id: string | null } | undefined> {
  return (await db.sql<{ done: string; after_id: string | null }>("select done::text, after_id::text from realtime.cursors where name = 'default'"))[0];
}

describe("NOTIFY forwarding", () => {
  it("forwards an application's pg_notify('data_changes', json) payloads unchanged to the data_changes channel", async () => {
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, notify: [{ pgChannel: "data_changes", channel: "data_changes" }] });
    const listening = relayEvent(relay, "idle");
    const sub = await TestSubscriber.connect(worker.url, "data_changes");
    try {
      await listening;
      await db.sql("insert into users (name) values ('ada'), ('grace')");
      const events = await sub.eventCount(2);
      expect(events.map((e) => e.event)).toEqual(["notify", "notify"]);
      expect(events.map((e) => e.data)).toEqual([
        { operation: "INSERT", table: "users", id: 1, data: { id: 1, name: "ada" } },
        { operation: "INSERT", table: "users", id: 2, data: { id: 2, name: "grace" } },
      ]);
      // A plain-text payload arrives as a string.
      await db.sql("select pg_notify('data_changes', 'changed')");
      const [, , text] = await sub.eventCount(3);
      expect(text!.data).toBe("changed");
    } finally {
      sub.close();
      await relay.stop();
    }
  });
});

describe("large events", () => {
  it("sends an event over --max-event-bytes as an {oversized} marker with its key, in order with the rest", async () => {
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, maxEventBytes: 2048 });
    const sub = await TestSubscriber.connect(worker.url, "todos");
    try {
      await relayEvent(relay, "idle");
      await db.sql("insert into todos (title) values ('small before'), ($1), ('small after')", ["x".repeat(10_000)]);
      const events = await sub.eventCount(3);
      const big = events[1]!.data as { oversized: boolean; bytes: number; key: { id: number } };
      expect(big).toMatchObject({ oversized: true, op: "INSERT", schema: "public", table: "todos" });
      expect(big.bytes).toBeGreaterThan(10_000);
      const [row] = await db.sql<{ id: string }>("select id from todos where length(title) = 10000");
      expect(big.key).toEqual({ id: Number(row!.id) });
      expect(events.map((e) => (e.data as { new?: { title: string } }).new?.title)).toEqual(["small before", undefined, "small after"]);
    } finally {
      sub.close();
      await relay.stop();
    }
  });
});

describe("cursor", () => {
  it("persists an acknowledged batch with the next read, or at once when the relay stops right after it", async () => {
    const sub = await TestSubscriber.connect(worker.url, "todos");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
    try {
      await relayEvent(relay, "idle");
      const before = await cursorRow();
      // Stop inside the acknowledgement: no read follows to carry the cursor.
      relay.once("batch", () => void relay.stop());
      await db.sql("insert into todos (title) select 'stop after ack ' || g from generate_series(1, 5) g");
      expect((await sub.eventCount(5)).length).toBe(5);
      await relay.stop();
      const after = await cursorRow();
      expect(after!.done).not.toBe(before!.done);
      // The next relay starts past them: nothing is sent again.
      const next = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
      const batches: number[] = [];
      next.on("batch", (info) => batches.push(info.events));
      await relayEvent(next, "idle");
      await next.stop();
      expect(batches).toEqual([]);
      expect(await cursorRow()).toEqual(after);
    } finally {
      sub.close();
      await relay.stop();
    }
  });

  it("moves only after a 2xx: while the Worker answers 500 nothing is acknowledged, and afterwards every event arrives once", async () => {
    const proxy = await startFaultProxy(worker.url);
    const sub = await TestSubscriber.connect(worker.url, "todos");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url });
    try {
      await relayEvent(relay, "idle");
      const before = await cursorRow();
      proxy.mode = "error500";
      await db.sql("insert into todos (title) select 'during outage ' || g from generate_series(1, 20) g");
      // Several failed attempts, each retried with backoff.
      await relayEvent(relay, "retry", (info) => info.attempt >= 3);
      expect(proxy.counts.passed).toBe(0);
      expect(await cursorRow()).toEqual(before);
      expect(sub.events).toEqual([]);
      proxy.mode = "pass";
      const events = await sub.eventCount(20);
      expect(events.map((e) => (e.data as { new: { title: string } }).new.title)).toEqual(Array.from({ length: 20 }, (_, i) => `during outage ${i + 1}`));
      await relayEvent(relay, "idle");
      expect((await cursorRow())!.done).not.toBe(before!.done);
    } finally {
      sub.close();
      await relay.stop();
      await proxy.close();
    }
  });

  it("reconnects after its backends are killed with pg_terminate_backend and carries on from its cursor", async () => {
    const sub = await TestSubscriber.connect(worker.url, "todos");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
    try {
      await relayEvent(relay, "idle");
      await db.sql("insert into todos (title) values ('before kill')");
      await sub.eventCount(1);
      const reconnected = relayEvent(relay, "leader");
      const killed = await db.sql<{ pid: number }>(
        "select pg_terminate_backend(pid) as pid from pg_stat_activity where application_name like 'pg-edge-realtime relay%' and datname = current_database()",
      );
      expect(killed.length).toBe(2);
      await db.sql("insert into todos (title) values ('while reconnecting')");
      await reconnected;
      await db.sql("insert into todos (title) values ('after reconnect')");
      const events = await sub.eventCount(3);
      expect(events.map((e) => (e.data as { new: { title: string } }).new.title)).toEqual(["before kill", "while reconnecting", "after reconnect"]);
      expect(new Set(events.map((e) => e.id)).size).toBe(3);
    } finally {
      sub.close();
      await relay.stop();
    }
  });

  it("wakes within the poll interval's fraction when a writer rings the doorbell, and resets the doorbell when stopped", async () => {
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, pollIntervalMs: 60_000 });
    const sub = await TestSubscriber.connect(worker.url, "todos");
    try {
      await relayEvent(relay, "idle");
      expect(await db.sql("select waiting from realtime.doorbells where name = 'default'")).toEqual([{ waiting: true }]);
      // With a one-minute poll, only the doorbell can deliver this within the test's timeout.
      await db.sql("insert into todos (title) values ('rung')");
      await sub.eventCount(1, 10_000);
    } finally {
      sub.close();
      await relay.stop();
    }
    expect(await db.sql("select waiting from realtime.doorbells where name = 'default'")).toEqual([{ waiting: false }]);
  });
});

describe("least privilege", () => {
  it("relays and prunes as realtime_relay, a role with only the grants of sql/relay-role.sql", async () => {
    const { readFileSync } = await import("node:fs");
    await db.sql(readFileSync(new URL("../../sql/relay-role.sql", import.meta.url), "utf8"));
    await db.sql("alter role realtime_relay password 'relay-password-for-tests'");
    const url = new URL(db.url);
    url.username = "realtime_relay";
    url.password = "relay-password-for-tests";
    // The role cannot touch the application's tables.
    const { default: pg } = await import("pg");
    const probe = new pg.Client({ connectionString: url.toString() });
    await probe.connect();
    await expect(probe.query("select * from todos")).rejects.toThrow(/permission denied/);
    await probe.end();

    const relay = startRelay({ databaseUrl: url.toString(), workerUrl: worker.url, name: "least", retentionSeconds: 0, pruneIntervalMs: 50 });
    const pruned = relayEvent(relay, "pruned", (p) => p.rows > 0); // its first rounds delete what earlier tests delivered
    const sub = await TestSubscriber.connect(worker.url, "todos");
    try {
      await relayEvent(relay, "idle");
      await db.sql("insert into todos (title) values ('as realtime_relay')");
      expect((await sub.eventCount(1))[0]!.data).toMatchObject({ new: { title: "as realtime_relay" } });
      await pruned;
    } finally {
      sub.close();
      await relay.stop();
      await db.sql("delete from realtime.cursors where name = 'least'");
    }
  });
});

describe("CLI", () => {
  const env = (over: Record<string, string> = {}) => ({ DATABASE_URL: db.url, WORKER_URL: worker.url, INGEST_SECRET: TEST_SECRET, ...over });

  // Every bad setting and its message: config.test.ts, without a process. This one proves the process's side.
  it.each([[{ RELAY_BATCH_SIZE: "5000" }, /--batch-size must be an integer from 1 to 1000/]])(
    "exits 2 with one line saying what to fix: %o",
    async (over, message) => {
      const child = spawnCli(["relay"], env(over));
      expect(await child.exited).toBe(2);
      const out = child.output().trim();
      expect(out.split("\n")).toHaveLength(1);
      expect(out).toMatch(message);
      expect(out).not.toContain(TEST_SECRET);
    },
  );

  it("documents every option with its environment variable in --help", async () => {
    const child = spawnCli(["--help"], {});
    expect(await child.exited).toBe(0);
    for (const v of ["DATABASE_URL", "WORKER_URL", "INGEST_SECRET", "RELAY_BATCH_SIZE", "RELAY_POLL_INTERVAL_MS", "RELAY_NOTIFY"]) {
      expect(child.output()).toContain(v);
    }
  });

  it("backfills a table in pages with a progress line and a summary", async () => {
    await db.sql(
      "create table many (id int primary key, v text); insert into many select g, 'v' || g from generate_series(1, 2500) g; select realtime.watch('many')",
    );
    const child = spawnCli(["backfill", "public.many"], env());
    expect(await child.exited).toBe(0);
    const lines = child.output().trim().split("\n");
    expect(lines[0]).toMatch(/^backfill public\.many: 1,000 of 2,500 rows \(40%\), [\d,]+ rows\/s$/);
    expect(lines.at(-1)).toMatch(/^backfill public\.many: done, 2,500 rows written to the outbox in [\d.]+ s/);
    const [{ n }] = (await db.sql<{ n: string }>("select count(*) as n from realtime.outbox where channel = 'many' and payload->>'backfill' = 'true'")) as [
      { n: string },
    ];
    expect(Number(n)).toBe(2500);
    const bad = spawnCli(["backfill", "public.nothere"], env());
    expect(await bad.exited).toBe(2);
    expect(bad.output()).toMatch(/cannot read public\.nothere/);
  });

  // The relay's options against the README's table: config.test.ts.
  it("has every variable the Worker reads in the README's configuration table", async () => {
    const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
    // Every variable the Worker reads (worker/env.ts) has its row.
    const envFile = readFileSync(new URL("../../worker/env.ts", import.meta.url), "utf8");
    const workerVars = [...envFile.matchAll(/^ {2}([A-Z_]+)\?: string;/gm)].map((m) => m[1]!);
    expect(workerVars.length).toBeGreaterThan(15);
    for (const name of workerVars) expect(readme).toContain(`| \`${name}\``);
  });

  it("relays as a process, and on SIGTERM finishes, saves its cursor and exits 0", async () => {
    const sub = await TestSubscriber.connect(worker.url, "todos");
    const child = spawnCli(["relay"], env({ RELAY_POLL_INTERVAL_MS: "200" }));
    try {
      await db.sql("insert into todos (title) values ('via cli')");
      const [e] = await sub.until(
        () => sub.events.find((x) => (x.data as { new?: { title: string } }).new?.title === "via cli") && sub.events,
        "the CLI's event",
      );
      expect(e).toBeDefined();
      child.kill("SIGTERM");
      expect(await child.exited).toBe(0);
      const logs = child
        .output()
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { msg: string });
      expect(logs.map((l) => l.msg)).toContain("leading");
      expect(child.output()).not.toContain(TEST_SECRET);
      expect(child.output()).not.toContain("postgres:postgres@"); // the password is redacted
    } finally {
      child.kill("SIGKILL");
      sub.close();
    }
  });
});
