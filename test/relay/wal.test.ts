/**
 * The wal source (relay/wal.ts): capture written as logical decoding messages, streamed over a
 * replication slot. The same guarantees as the outbox: every event once, per-row commit order,
 * nothing lost across a relay killed mid-burst or a Worker outage, and clear errors.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { relayMetrics } from "../../relay/observe.ts";
import { formatLsn, parseLsn, parseMessage, slotName } from "../../relay/wal.ts";
import { expectExactlyOnceInOrder, killTwiceDuringBurst, writeNumbered } from "../faults/ledger.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;
let proxy: FaultProxy;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("wal"), startTestWorker()]);
  const [{ wal_level }] = (await db.sql<{ wal_level: string }>("show wal_level")) as [{ wal_level: string }];
  if (wal_level !== "logical")
    throw new Error(
      `these tests need wal_level = logical, and the test Postgres has ${wal_level}: set it on DATABASE_URL's server (ALTER SYSTEM SET wal_level = logical, then restart), or unset DATABASE_URL`,
    );
  proxy = await startFaultProxy(worker.url);
  await db.sql("create table items (id int primary key, tenant text not null, v int not null default 0)");
  await db.sql("select realtime.watch('items', 'wal-items:{tenant}')");
});

afterAll(async () => {
  await proxy?.close();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

async function capture(): Promise<string> {
  return (await db.sql<{ capture: string }>("select capture from realtime.installation"))[0]!.capture;
}

async function outboxRows(): Promise<number> {
  return Number((await db.sql<{ n: string }>("select count(*) as n from realtime.outbox"))[0]!.n);
}

describe("the message format and positions", () => {
  it("splits channel, event, retain and the payload (whose own newlines stay)", () => {
    expect(parseMessage('tenant:7\nupdate\n1\n{"a":"x\\ny","b":\n2}')).toEqual({
      channel: "tenant:7",
      event: "update",
      retain: true,
      data: '{"a":"x\\ny","b":\n2}',
    });
    expect(parseMessage("app\nhello\n0\nnull")).toEqual({ channel: "app", event: "hello", retain: false, data: "null" });
    for (const bad of ["", "app", "app\nhello", "app\nhello\n2\n{}", "app\nhello\n10\n{}"]) expect(() => parseMessage(bad)).toThrow(/did not write/);
  });

  it("reads and writes LSNs as Postgres prints them, and names slots as Postgres allows", () => {
    expect(parseLsn("16/B374D848")).toBe(0x16b374d848n);
    expect(formatLsn(0x16b374d848n)).toBe("16/B374D848");
    expect(formatLsn(parseLsn("0/0"))).toBe("0/0");
    expect(() => parseLsn("16B374D848")).toThrow(/not an LSN/);
    expect(slotName("0f98C6", "eu-west.1:p0of2")).toBe("realtime_0f98c6_eu_west_1_p0of2");
    expect(slotName("a".repeat(12), "n".repeat(64))).toHaveLength(63);
  });
});

describe("switching to the WAL", () => {
  it("refuses to switch capture by hand while no relay slot exists (events would be lost)", async () => {
    await expect(db.sql("select realtime.set_capture('wal')")).rejects.toThrow(/no relay replication slot/);
    await expect(db.sql("select realtime.set_capture('binlog')")).rejects.toThrow(/'binlog' is not a capture mode/);
    expect(await capture()).toBe("outbox");
  });

  it("creates its slot, switches capture, ships what the outbox held, then 8 writers' changes once each in per-row commit order", async () => {
    await db.sql("insert into items (id, tenant) select g, 't' || (g % 2) from generate_series(1, 6) g");
    expect(await outboxRows()).toBe(6); // written before the switch: the outbox still ships them
    const subs = await Promise.all(["wal-items:t0", "wal-items:t1"].map((c) => TestSubscriber.connect(worker.url, c)));
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, source: "wal", batchSize: 50 });
    try {
      await relayEvent(relay, "streaming");
      expect(await capture()).toBe("wal");
      const [slot] = await db.sql<{ slot_name: string; plugin: string }>(
        "select slot_name, plugin from pg_replication_slots where database = current_database()",
      );
      const [install] = await db.sql<{ install_id: string }>("select install_id from realtime.installation");
      expect(slot).toEqual({ slot_name: slotName(install!.install_id, "default"), plugin: "pgoutput" });

      // 8 connections increment rows, 40 transactions each; then a row moves to the other
      // channel (a delete there, an insert here) and one is deleted.
      const increments = new Map<number, number>();
      await Promise.all(
        Array.from({ length: 8 }, async (_, w) => {
          const c = await db.client();
          for (let i = 0; i < 40; i++) {
            const id = ((w * 7 + i * 3) % 6) + 1;
            increments.set(id, (increments.get(id) ?? 0) + 1);
            await c.query("update items set v = v + 1 where id = $1", [id]);
          }
        }),
      );
      await db.sql("update items set tenant = 't1' where id = 2"); // t0 → t1
      await db.sql("delete from items where id = 6");
      const count = (ids: number[]) => ids.reduce((n, id) => n + (increments.get(id) ?? 0), 0);
      const [t0, t1] = [
        await subs[0]!.eventCount(3 + count([2, 4, 6]) + 2, 60_000), // inserts, updates, row 2 moved away, row 6 deleted
        await subs[1]!.eventCount(3 + count([1, 3, 5]) + 1, 60_000), // inserts, updates, row 2 moved in
      ];
      const events = [...t0, ...t1];
      // Every increment arrived once, and each row's values in the order they were committed.
      for (const id of [1, 2, 3, 4, 5, 6]) {
        const vs = events
          .filter((e) => e.event === "update" && (e.data as { key: { id: number } }).key.id === id)
          .map((e) => (e.data as { new: { v: number } }).new.v);
        expect({ id, vs }).toEqual({ id, vs: Array.from({ length: increments.get(id) ?? 0 }, (_, i) => i + 1) });
      }
      expect(t0.slice(-2).map((e) => [e.event, (e.data as { key: { id: number } }).key.id])).toEqual([
        ["delete", 2],
        ["delete", 6],
      ]);
      expect(t1.at(-1)).toMatchObject({ event: "insert", data: { key: { id: 2 }, new: { tenant: "t1", v: increments.get(2) } } });
      // The 6 rows inserted before the switch came first, from the outbox.
      expect([...t0.slice(0, 3), ...t1.slice(0, 3)].every((e) => e.event === "insert" && (e.data as { new: { v: number } }).new.v === 0)).toBe(true);
      // After the switch, writers wrote nothing to the outbox.
      expect(await outboxRows()).toBe(6);
      // Ids are the messages' WAL positions: unique.
      expect(new Set(events.map((e) => e.id)).size).toBe(events.length);
    } finally {
      for (const s of subs) s.close();
      await relay.stop();
    }
  });

  it("moves the slot past acknowledged transactions, and past work it does not ship once idle", async () => {
    const sub = await TestSubscriber.connect(worker.url, "wal-app");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, source: "wal" });
    const confirmed = async () =>
      parseLsn(
        (await db.sql<{ lsn: string }>("select confirmed_flush_lsn::text as lsn from pg_replication_slots where database = current_database()"))[0]!.lsn,
      );
    try {
      await relayEvent(relay, "streaming");
      const before = await confirmed();
      const acked = relayEvent(relay, "batch", (b) => b.source === "wal");
      await db.sql("select realtime.publish('wal-app', 'hello', '{\"n\": 1}')");
      await acked;
      expect((await sub.eventCount(1))[0]).toMatchObject({ event: "hello", data: { n: 1 } });
      expect(await confirmed()).toBeGreaterThan(before);
      // Writes to a table nobody watches produce no event, but must not pin the WAL: the relay
      // confirms the server's position once nothing of its own is pending.
      await db.sql("create table unwatched (n int); insert into unwatched select generate_series(1, 1000)");
      const written = parseLsn((await db.sql<{ lsn: string }>("select pg_current_wal_lsn()::text as lsn"))[0]!.lsn);
      await pollUntil(async () => (await confirmed()) >= written, "the slot to pass unshipped work");
      // Caught up: the metric says the slot holds no WAL beyond what the server wrote since.
      expect(await relayMetrics(relay).getSingleMetricAsString("relay_wal_lag_bytes")).toMatch(/relay_wal_lag_bytes\{name="default"\} \d+/);
      const lag = (await relay.walLag())!.bytes;
      expect(lag).toBeLessThan(64 * 1024);
    } finally {
      sub.close();
      await relay.stop();
    }
  });

  it("skips, and logs, a 'realtime' message the capture functions did not write, and goes on delivering", async () => {
    const sub = await TestSubscriber.connect(worker.url, "wal-after-junk");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url, source: "wal" });
    try {
      await relayEvent(relay, "streaming");
      await db.sql("select pg_logical_emit_message(true, 'realtime', 'not an event')");
      await db.sql("select realtime.publish('wal-after-junk', 'ok', '{}')");
      expect((await sub.eventCount(1))[0]).toMatchObject({ event: "ok" });
      const logged = (relay as typeof relay & { logLines: string[] }).logLines.find((l) => l.includes("did not write"));
      expect(JSON.parse(logged!)).toMatchObject({ level: "error", error: expect.stringContaining("not an event") });
    } finally {
      sub.close();
      await relay.stop();
    }
  });

  it("keeps a write whose channel name the Worker would refuse and leaves its event out with a WARNING; publish() of a bad name fails", async () => {
    const c = await db.client();
    const warnings: string[] = [];
    c.on("notice", (n) => warnings.push(`${n.severity}: ${n.message}`));
    await c.query("insert into items (id, tenant) values (100, 'no spaces')");
    expect(await db.sql("select id from items where id = 100")).toEqual([{ id: 100 }]);
    expect(warnings).toEqual([
      "WARNING: realtime: this insert on items is not captured: its channel template gave 'wal-items:no spaces', which is not a channel name",
    ]);
    await expect(db.sql("select realtime.publish('bad name', 'x')")).rejects.toThrow(/is not a valid channel name/);
  });
});

/** Polls Postgres state that has no event to wait on (the slot's position), every 50 ms, for up to 20 s. */
async function pollUntil(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("faults", () => {
  it("loses and duplicates nothing when the relay is SIGKILLed twice during a burst on 3 channels", async () => {
    await killTwiceDuringBurst({
      db,
      workerUrl: worker.url,
      proxy,
      channels: ["wal-crash-a", "wal-crash-b", "wal-crash-c"],
      perChannel: 1500,
      env: { RELAY_SOURCE: "wal" },
      ready: "streaming",
    });
  });

  it("keeps events in Postgres through a Worker outage, even when the relay is stopped during it, then delivers them once, in order", async () => {
    const sub = await TestSubscriber.connect(worker.url, "wal-outage");
    let relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url, source: "wal", batchSize: 100 });
    try {
      await relayEvent(relay, "streaming");
      proxy.mode = "refuse";
      const retried = relayEvent(relay, "retry");
      // A transaction of its own: the refused batch completes it, so a relay that moved the slot
      // before the Worker's acknowledgement would skip it after the restart below.
      await writeNumbered(db, "wal-outage", 1, 1);
      // Past the end of that transaction's commit record.
      const [committed] = await db.sql<{ lsn: string }>("select pg_current_wal_insert_lsn()::text as lsn");
      await retried;
      // More than the stream buffers (4 batches): the rest waits in the WAL, the socket paused.
      await writeNumbered(db, "wal-outage", 2, 3000, 50);
      // Stopped with a batch refused: the slot must not have moved past its transaction's commit.
      // (It may lie inside the transaction, past the event's own record: a keepalive's position
      // confirmed while nothing was pending. That loses nothing: Postgres decodes again every
      // transaction that commits after the slot's position, whole.)
      await relay.stop();
      const refused = BigInt(proxy.ingests.at(-1)![0]!.split("-w")[1]!);
      const [slot] = await db.sql<{ lsn: string }>("select confirmed_flush_lsn::text as lsn from pg_replication_slots where database = current_database()");
      expect(refused).toBeLessThan(parseLsn(committed!.lsn));
      expect(parseLsn(slot!.lsn)).toBeLessThan(parseLsn(committed!.lsn));
      relay = startRelay({ databaseUrl: db.url, workerUrl: proxy.url, source: "wal", batchSize: 100 });
      proxy.mode = "error500";
      await relayEvent(relay, "retry");
      proxy.mode = "pass";
      expectExactlyOnceInOrder(await sub.eventCount(3000, 60_000), "wal-outage", 3000);
    } finally {
      proxy.mode = "pass";
      sub.close();
      await relay.stop();
    }
  });
});
