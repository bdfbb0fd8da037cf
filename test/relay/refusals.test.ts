/**
 * The relay against a Worker that refuses: a batch refused for its content is split until the
 * refused event stands alone, the rest is delivered in order, and the relay never loops on the
 * same batch; a relay the Worker refuses as such (a wrong secret) stops and its process fails.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { relayMetrics } from "../../relay/observe.ts";
import type { Relay } from "../../relay/relay.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { relayEvent, spawnCli, startRelay } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;

beforeAll(async () => {
  // A Worker whose requests are smaller than the relay's batches and events.
  [db, worker] = await Promise.all([testDatabase("refusals"), startTestWorker({ MAX_INGEST_BYTES: "20000", MAX_BATCH_EVENTS: "7" })]);
  await db.sql(`
    create table notes (id bigint primary key, body text not null);
    select realtime.watch('notes');
  `);
});

afterAll(async () => {
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

async function stopped(relay: Relay): Promise<void> {
  await relay.stop();
}

describe("a batch the Worker refuses for its content", () => {
  it("is split until it fits: a batch past MAX_BATCH_EVENTS and MAX_INGEST_BYTES arrives whole, and an event larger than a request arrives as an event_too_large marker, in order", async () => {
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
    const sub = await TestSubscriber.connect(worker.url, "notes");
    try {
      await relayEvent(relay, "idle");
      // One transaction: one window, one batch of 30 events (past 7 per request and 20 kB), one of them 50 kB.
      await db.sql(`insert into notes select g, case when g = 9223372036854775807 then repeat('x', 50000) else repeat('y', 1000) end
                    from (select generate_series(1, 29)::bigint as g union all select 9223372036854775807) s`);
      const events = await sub.eventCount(30);
      const ids = events.map((e) => (e.data as { key: { id: unknown } }).key.id);
      expect(ids.slice(0, 29)).toEqual(Array.from({ length: 29 }, (_, i) => i + 1));
      // The marker names the row by its exact key (the client parses it; the frame carries the digits).
      expect(events[29]!.data).toMatchObject({ oversized: true, reason: "event_too_large", op: "INSERT", table: "notes" });
      expect(sub.frames.some((f) => f.type === "events")).toBe(true);
      expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => events[0]!.seq + i));
    } finally {
      sub.close();
      await stopped(relay);
    }
  });

  it("skips an event the Worker refuses on its own, logs its source id, counts it, and delivers the events around it", async () => {
    // A DBA dropped the outbox's check constraint, and a publish wrote an event name the Worker refuses.
    await db.sql("alter table realtime.outbox drop constraint outbox_event_valid");
    const relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
    const metrics = relayMetrics(relay);
    const sub = await TestSubscriber.connect(worker.url, "chat");
    try {
      await relayEvent(relay, "idle");
      const refused = new Promise<{ id: string; code: string }>((resolve) => relay.once("refused", resolve));
      const c = await db.client();
      await c.query("begin");
      await c.query("select realtime.publish('chat', 'said', '1')");
      const bad = await c.query<{ id: string }>(
        "insert into realtime.outbox (channel, event, payload) values ('chat', 'not valid!', '2') returning (select install_id from realtime.installation) || '-' || id as id",
      );
      await c.query("select realtime.publish('chat', 'said', '3')");
      await c.query("commit");
      const id = bad.rows[0]!.id;
      const events = await sub.eventCount(2);
      expect(events.map((e) => e.data)).toEqual([1, 3]);
      expect(await refused).toMatchObject({ id, code: "invalid_body" });
      const lines = (relay as Relay & { logLines: string[] }).logLines.filter((l) => l.includes("refused an event"));
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0]!)).toMatchObject({ level: "error", id, channel: "chat", event: "not valid!" });
      expect(await metrics.getSingleMetricAsString("relay_events_refused_total")).toMatch(/relay_events_refused_total\{[^}]*\} 1$/m);
      // Delivery goes on.
      await db.sql("select realtime.publish('chat', 'said', '4')");
      expect((await sub.eventCount(3)).map((e) => e.data)).toEqual([1, 3, 4]);
    } finally {
      sub.close();
      await stopped(relay);
      await db.sql("alter table realtime.outbox add constraint outbox_event_valid check (event ~ '^[A-Za-z0-9_.:-]{1,64}$') not valid");
    }
  });
});

describe("a relay the Worker refuses", () => {
  it("exits non-zero with what to fix when its INGEST_SECRET is not the Worker's, after a few attempts", async () => {
    await db.sql("select realtime.publish('secret', 'x', '1')");
    const cli = spawnCli(["relay"], {
      DATABASE_URL: db.url,
      WORKER_URL: worker.url,
      INGEST_SECRET: "not-the-workers-secret-0123456789",
      RELAY_RETRY_BASE_MS: "10",
      RELAY_RETRY_MAX_MS: "50",
    });
    const code = await cli.exited;
    expect(code).toBe(3);
    expect(cli.output()).toContain("signature_mismatch");
    expect(cli.output()).toContain("set the relay's INGEST_SECRET to the Worker's");
    expect(cli.output()).toMatch(/refused 5 attempts in a row/);
  });
});
