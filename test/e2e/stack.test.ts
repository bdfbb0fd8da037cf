/**
 * End to end: a real Postgres, the relay, the Worker in workerd, real WebSocket clients.
 * Rows written from several concurrent connections reach every client complete, once each, and
 * in commit order: every update of a row arrives, in the order the row's versions committed.
 */
import { expect, it } from "vitest";
import type { ChangeEvent, ChannelEvent } from "../../protocol/index.ts";
import { recordingClient } from "../support/client.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";

const stack = useStack({
  database: "e2e",
  worker: {},
  setup: `
    create table counters (id int primary key, v int not null);
    insert into counters select g, 0 from generate_series(1, 8) g;
    select realtime.watch('counters', 'counters');
    create table notes (id bigint generated always as identity primary key, writer int not null, n int not null);
    select realtime.watch('notes', 'counters');
  `,
  relay: { batchSize: 50 },
});

it("delivers rows written by 8 concurrent connections to 5 clients, complete, once each, in per-row commit order", async () => {
  const subscribers = await Promise.all(Array.from({ length: 5 }, () => TestSubscriber.connect(stack.worker.url, "counters")));
  const WRITERS = 8;
  const TX_PER_WRITER = 60;
  try {
    // Each transaction bumps one counter (rows contend, so commit order matters) and adds a note.
    await Promise.all(
      Array.from({ length: WRITERS }, async (_, w) => {
        const c = await stack.db.client();
        for (let i = 0; i < TX_PER_WRITER; i++) {
          await c.query("begin");
          await c.query("update counters set v = v + 1 where id = $1", [((w * 7 + i * 3) % 8) + 1]);
          await c.query("insert into notes (writer, n) values ($1, $2)", [w, i]);
          await c.query("commit");
        }
      }),
    );
    const total = WRITERS * TX_PER_WRITER * 2;
    const outbox = await stack.db.sql<{ id: string }>(
      "select (select install_id from realtime.installation) || '-' || id as id from realtime.outbox where channel = 'counters'",
    );
    expect(outbox).toHaveLength(total);
    for (const sub of subscribers) {
      const events = await sub.eventCount(total, 60_000);
      expect(events).toHaveLength(total);
      // Exactly the outbox's events, each once.
      expect(new Set(events.map((e) => e.id))).toEqual(new Set(outbox.map((r) => r.id)));
      // seq is gapless.
      expect(events.every((e, i) => i === 0 || e.seq === events[i - 1]!.seq + 1)).toBe(true);
      // Every version of every counter, in order: 1, 2, 3, ... per row.
      const versions = new Map<number, number[]>();
      for (const e of events as ChannelEvent<string, ChangeEvent<{ id: number; v: number }>>[]) {
        if (e.data.table !== "counters") continue;
        versions.set(e.data.new!.id, [...(versions.get(e.data.new!.id) ?? []), e.data.new!.v]);
        expect(e.data.old!.v).toBe(e.data.new!.v - 1);
      }
      for (const [, vs] of versions) expect(vs).toEqual(vs.map((_, i) => i + 1));
      // Each writer's notes arrive in the order that writer committed them.
      for (let w = 0; w < WRITERS; w++) {
        const ns = events.flatMap((e) => {
          const d = e.data as ChangeEvent<{ writer: number; n: number }>;
          return d.table === "notes" && d.new!.writer === w ? [d.new!.n] : [];
        });
        expect(ns).toEqual(Array.from({ length: TX_PER_WRITER }, (_, i) => i));
      }
    }
    // All subscribers saw the very same sequence.
    const first = subscribers[0]!.events.map((e) => `${e.seq}:${e.id}`);
    for (const sub of subscribers.slice(1)) expect(sub.events.map((e) => `${e.seq}:${e.id}`)).toEqual(first);
  } finally {
    for (const s of subscribers) s.close();
  }
});

it("client/ resumes across a dropped connection: the partysocket subscriber gets every event once, in order", async () => {
  const c = recordingClient({ host: new URL(stack.worker.url).host, channel: "resume-e2e" });
  try {
    await c.until(() => c.sub.status === "open", "open");
    for (let i = 1; i <= 5; i++) await stack.db.sql("select realtime.publish('resume-e2e', 'n', $1::jsonb)", [String(i)]);
    await c.until(() => c.seen.events.length === 5, "5 events");
    // Cut the connection while events keep flowing; partysocket reconnects with since/epoch.
    c.sub.socket.reconnect();
    for (let i = 6; i <= 15; i++) await stack.db.sql("select realtime.publish('resume-e2e', 'n', $1::jsonb)", [String(i)]);
    await c.until(() => c.seen.events.length >= 15, "15 events");
    expect(c.seen.events.map((e) => e.data)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    expect(c.seen.events.map((e) => e.seq)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    expect(c.seen.statuses.filter((x) => x === "open").length).toBeGreaterThanOrEqual(2);
  } finally {
    c.sub.close();
  }
});
