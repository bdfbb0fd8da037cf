/**
 * A slot source's replication slot, watched and kept honest, on a Postgres of this file's own
 * (it changes server settings): its health is visible (metrics), a heartbeat moves it on while
 * only other databases write, and when Postgres invalidates it (past max_slot_wal_keep_size) the
 * relay makes a new one and every channel starts a new epoch: clients get `reset` ("lost") and a
 * snapshot with the rows captured again, never a silent hole.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installSchema } from "../../relay/install.ts";
import { relayMetrics } from "../../relay/observe.ts";
import type { Relay } from "../../relay/relay.ts";
import { createDatabase, type PostgresHandle, startEmbedded } from "../../scripts/postgres.ts";
import { recordingClient } from "../support/client.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

let server: PostgresHandle;
let db: { url: string; drop(): Promise<void> };
let worker: TestWorker;
let relay: Relay;

async function sql<R extends pg.QueryResultRow>(url: string, text: string, values?: unknown[]): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text, values)).rows;
  } finally {
    await c.end();
  }
}

/** Re-checks Postgres state that has no event to wait on, every 50 ms, for up to 30 s. */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const start = () => startRelay({ databaseUrl: db.url, workerUrl: worker.url, source: "publication", heartbeatMs: 200 });

beforeAll(async () => {
  [server, worker] = await Promise.all([startEmbedded(), startTestWorker()]);
  db = await createDatabase(server.url, "slots");
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  await installSchema(c);
  await c.query("create table items (id int primary key, v text); insert into items values (1, 'a'), (2, 'b')");
  await c.query("select realtime.watch('items', retain => true); select realtime.backfill('items')");
  await c.end();
  await sql(server.url, "create database elsewhere");
  relay = start();
  await relayEvent(relay, "streaming", undefined, 60_000);
}, 120_000);

afterAll(async () => {
  await relay?.stop();
  await worker?.dispose();
  await server?.stop();
});

const slot = async () =>
  (
    await sql<{ confirmed: string; wal_status: string }>(
      db.url,
      "select confirmed_flush_lsn::text as confirmed, wal_status from pg_replication_slots where slot_name like 'realtime%'",
    )
  )[0]!;
const lsnAtLeast = async (lsn: string) =>
  (
    await sql<{ ok: boolean }>(db.url, "select (select confirmed_flush_lsn from pg_replication_slots where slot_name like 'realtime%') >= $1::pg_lsn as ok", [
      lsn,
    ])
  )[0]!.ok;

describe("the replication slot", () => {
  it("shows its health in the metrics, and moves on while only another database writes (the heartbeat)", async () => {
    // Postgres 17 and later: a failover slot, which a standby with sync_replication_slots keeps.
    expect(await sql(db.url, "select failover from pg_replication_slots where slot_name like 'realtime%'")).toEqual([{ failover: true }]);
    const metrics = await relayMetrics(relay).metrics();
    expect(metrics).toMatch(/relay_slot_wal_status\{status="reserved"[^}]*\} 1/);
    expect(metrics).toMatch(/relay_slot_retained_wal_bytes\{[^}]*\} \d+/);
    const elsewhere = server.url.replace(/\/postgres$/, "/elsewhere");
    await sql(elsewhere, "create table busy as select g from generate_series(1, 20000) g");
    const lsn = (await sql<{ lsn: string }>(elsewhere, "select pg_current_wal_lsn()::text as lsn"))[0]!.lsn;
    // Without the heartbeat the slot moves only with the relay's status update every 10 s; with it,
    // within a heartbeat or two. 5 s tells the two apart with room to spare on a loaded machine.
    const started = Date.now();
    await until(() => lsnAtLeast(lsn), `the slot to pass ${lsn} (it is at ${(await slot()).confirmed})`);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("made anew when Postgres invalidated it: every channel starts a new epoch, clients reset (lost) and get the rows again", async () => {
    const client = recordingClient({ host: new URL(worker.url).host, channel: "items", snapshot: true });
    try {
      await client.until(() => client.seen.snapshots.at(-1)?.rows.length === 2 && client.seen.snapshots.at(-1), "the first snapshot");
      await relay.stop();
      // The relay is away; its slot holds WAL; Postgres may keep at most 1 MB of it.
      await sql(server.url, "alter system set max_slot_wal_keep_size = '1MB'");
      await sql(server.url, "select pg_reload_conf()");
      await sql(db.url, "insert into items values (3, 'written while the slot was lost')");
      for (let i = 0; i < 4 && (await slot()).wal_status !== "lost"; i++) {
        await sql(db.url, "create table if not exists filler (x text); insert into filler select repeat('x', 200) from generate_series(1, 100000)");
        await sql(db.url, "select pg_switch_wal()");
        await sql(db.url, "checkpoint");
      }
      await until(async () => (await slot()).wal_status === "lost", "Postgres to invalidate the slot");

      relay = start();
      const lost = relayEvent(relay, "slotLost");
      await lost;
      await relayEvent(relay, "streaming", undefined, 60_000);
      await client.until(() => client.seen.resets.find((r) => r.reason === "lost"), "a reset: lost");
      const ids = () =>
        client.seen.snapshots
          .at(-1)
          ?.rows.map((r) => (r.row as { id: number }).id)
          .sort();
      // The snapshot after the reset, then the rows captured again through the new slot.
      await client.until(() => ids()?.length === 0 || ids()?.length === 3, "the snapshot after the reset");
      await sql(db.url, "insert into items values (4, 'after')");
      await client.until(() => client.seen.events.some((e) => (e.data as { new?: { id: number } }).new?.id === 4), "a row written after");
      const after = client.seen.events.filter((e) => e.seq > 0).map((e) => (e.data as { new?: { id: number } }).new?.id);
      // Every row is known again: 1, 2 and 3 captured again (3 was lost), then 4.
      expect(new Set([...(ids() ?? []), ...after.filter((x): x is number => x !== undefined)])).toEqual(new Set([1, 2, 3, 4]));
      const [epochs] = await sql<{ announced: boolean }>(db.url, "select announced from realtime.slot_epochs");
      expect(epochs).toEqual({ announced: true });
    } finally {
      client.sub.close();
      await sql(server.url, "alter system reset max_slot_wal_keep_size").catch(() => undefined);
      await sql(server.url, "select pg_reload_conf()").catch(() => undefined);
    }
  }, 120_000);
});
