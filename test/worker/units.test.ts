/**
 * The Channel's parts on their own, inside workerd on a Durable Object's SQLite: the event log
 * (dedupe, chunking, replay, trimming), the shard members, the meta table; and the change rules
 * that the channel and the client both follow (protocol/change.ts), checked against each other; a
 * shard's coalesced sync calls to its root.
 */

import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { applyChange, parseJson, type RowState, type SnapshotFrame, stateFromSnapshot } from "../../protocol/index.ts";
import { Coalescer } from "../../worker/coalesce.ts";
import { chunks, EventLog } from "../../worker/event-log.ts";
import { type Join, packJoins, unpackJoins } from "../../worker/join.ts";
import { MetaTable } from "../../worker/meta.ts";
import { ShardMembers } from "../../worker/presence.ts";
import { change, ingest, Socket } from "./helpers.ts";

let objects = 0;
/** Runs `fn` on the SQLite of a fresh object of its own (a shard object: it has no log tables of its own). */
function onFreshStorage<T>(fn: (sql: SqlStorage) => T): Promise<T> {
  const stub = env.SHARD.get(env.SHARD.idFromName(`units-${++objects}`));
  return runInDurableObject(stub, (_, state) => fn(state.storage.sql));
}

const bounds = { maxEvents: 1_000, maxAgeMs: 86_400_000 };
const logged = (seq: number, data = `{"n":${seq}}`) => ({ seq, id: `id-${seq}`, event: "e", data, ts: 1_700_000_000_000 + seq });

describe("EventLog", () => {
  it("replays what it stored, data as the exact text, in seq order; knows every id it stored", async () => {
    const result = await onFreshStorage((sql) => {
      const log = new EventLog(sql, bounds);
      log.append([logged(1, '{"n":12345678901234567890}'), logged(2, '[1.50, "x"]'), logged(3)], Date.now());
      return { from0: log.from(0), from2: log.from(2).map((e) => e.seq), known: [...log.known(["id-1", "id-3", "id-9"])], size: log.size() };
    });
    expect(result.from0.map((e) => e.data)).toEqual(['{"n":12345678901234567890}', '[1.50, "x"]', '{"n":3}']);
    expect(result.from0[0]!.json).toBe('{"seq":1,"id":"id-1","event":"e","data":{"n":12345678901234567890},"ts":1700000000001}');
    expect(result.from2).toEqual([3]);
    expect(result.known.sort()).toEqual(["id-1", "id-3"]);
    expect(result.size).toEqual({ events: 3, oldest: 1 });
  });

  it("stores data larger than one SQLite value in chunks and reads it back whole", async () => {
    const big = `{"s":"${"é".repeat(400_000)}😀${"x".repeat(700_000)}"}`;
    const back = await onFreshStorage((sql) => {
      const log = new EventLog(sql, bounds);
      log.append([logged(1, big)], Date.now());
      const parts = sql.exec<{ n: number }>("select count(*) as n from log_part").one().n;
      return { data: log.from(0)[0]!.data, parts };
    });
    expect(back.parts).toBeGreaterThan(1);
    expect(back.data === big).toBe(true);
  });

  it("trims to its count bound, keeps what a conflation window has yet to send, and reports what it no longer covers", async () => {
    const result = await onFreshStorage((sql) => {
      const log = new EventLog(sql, { maxEvents: 10, maxAgeMs: 86_400_000 });
      const now = Date.now();
      log.append(
        Array.from({ length: 30 }, (_, i) => logged(i + 1)),
        now,
      );
      log.trim(30, now, 15); // events after 15 are not yet delivered
      const kept = log.size();
      const covers = [log.covers(15), log.covers(14)];
      log.trim(30, now, 30);
      return { kept, covers, after: log.size(), stillKnown: log.known(["id-1"]).size };
    });
    expect(result.kept).toEqual({ events: 15, oldest: 16 });
    expect(result.covers).toEqual([true, false]);
    expect(result.after).toEqual({ events: 10, oldest: 21 });
    // Ids are remembered past the log (at least DEDUPE_MIN_IDS of them): a re-sent batch is dropped.
    expect(result.stillKnown).toBe(1);
  });

  it("clears its events for a new epoch but still knows their ids", async () => {
    const result = await onFreshStorage((sql) => {
      const log = new EventLog(sql, bounds);
      log.append([logged(1), logged(2)], Date.now());
      log.clear();
      log.remember("reset-1", 2, Date.now());
      return { size: log.size(), known: log.known(["id-1", "id-2", "reset-1"]).size, covers: log.covers(2) };
    });
    expect(result).toEqual({ size: { events: 0, oldest: null }, known: 3, covers: false });
  });

  it("cuts text into pieces of at most the unit count, never inside a surrogate pair, and loses nothing", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), fc.integer({ min: 2, max: 17 }), (text, units) => {
        const pieces = chunks(text, units);
        expect(pieces.join("")).toBe(text);
        for (const p of pieces) {
          expect(p.length).toBeGreaterThan(0);
          expect(p.length).toBeLessThanOrEqual(units);
        }
        for (const p of pieces.slice(0, -1)) {
          const last = p.charCodeAt(p.length - 1);
          const next = text.charCodeAt(pieces.slice(0, pieces.indexOf(p) + 1).join("").length);
          expect(last >= 0xd800 && last <= 0xdbff && next >= 0xdc00 && next <= 0xdfff).toBe(false);
        }
      }),
    );
  });
});

describe("ShardMembers and MetaTable", () => {
  it("lists shard members in join order with their latest state, and forgets those who left", async () => {
    const list = await onFreshStorage((sql) => {
      const members = new ShardMembers(sql);
      members.join({ id: "a", user: "u1", state: null }, 0);
      members.join({ id: "b", user: null, state: { n: 1 } }, 1);
      members.update({ id: "a", user: "u1", state: { typing: true } });
      members.join({ id: "c", user: "u3", state: null }, 0);
      members.leave({ id: "b", user: null, state: null });
      return members.list();
    });
    expect(list).toEqual([
      { id: "a", user: "u1", state: { typing: true } },
      { id: "c", user: "u3", state: null },
    ]);
  });

  it("writes through to SQLite and reads back after a reload", async () => {
    const result = await onFreshStorage((sql) => {
      const meta = new MetaTable(sql);
      meta.set("seq", 41);
      meta.set("name", "todos");
      const again = new MetaTable(sql);
      return { seq: again.number("seq"), name: again.get("name"), missing: again.number("nothing", 7), has: again.has("seq") };
    });
    expect(result).toEqual({ seq: 41, name: "todos", missing: 7, has: true });
  });
});

describe("the change rules, at the edge and in the client", () => {
  type Op = { op: "INSERT" | "UPDATE" | "DELETE"; table: "a" | "b"; id: number; v: number } | { op: "TRUNCATE"; table: "a" | "b" };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      op: fc.constantFrom("INSERT" as const, "UPDATE" as const, "DELETE" as const),
      table: fc.constantFrom("a" as const, "b" as const),
      id: fc.integer({ min: 1, max: 5 }),
      v: fc.integer(),
    }),
    fc.record({ op: fc.constant("TRUNCATE" as const), table: fc.constantFrom("a" as const, "b" as const) }),
  );
  let run = 0;

  it("the channel's snapshot equals the client's state after applying the same events (applyChange)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
        const channel = `rules-${++run}`;
        const events = ops.map((o) =>
          o.op === "TRUNCATE" ? change(channel, "TRUNCATE", null, { table: o.table }) : change(channel, o.op, { id: o.id, v: o.v }, { table: o.table }),
        );
        expect((await ingest(events)).status).toBe(200);
        // The client's view: applyChange over the events as they arrive.
        const client: RowState = stateFromSnapshot([]);
        for (const e of events) applyChange(client, parseJson(e.data));
        // The channel's view: the snapshot a new subscriber is sent.
        const sock = await Socket.open(channel, "snapshot=1");
        const snapshot = (await sock.until(() => sock.frames.find((f) => f.type === "snapshot"))) as SnapshotFrame;
        sock.ws.close();
        const edge = stateFromSnapshot(snapshot.rows);
        expect(new Map([...edge.rows].sort())).toEqual(new Map([...client.rows].sort()));
        expect(edge.oversized.size).toBe(0);
      }),
      { numRuns: 15 },
    );
  });

  it("applyChange ignores what is not a change and reports whether anything changed", () => {
    const state: RowState = stateFromSnapshot([]);
    expect(applyChange(state, { hello: "world" })).toBe(false);
    expect(applyChange(state, null)).toBe(false);
    expect(applyChange(state, { op: "INSERT", schema: "public", table: "t", key: { id: 1 }, new: { id: 1 } })).toBe(true);
    expect(applyChange(state, { op: "TRUNCATE", schema: "public", table: "other" })).toBe(false);
    expect(applyChange(state, { op: "INSERT", schema: "public", table: "t", key: { id: 2 }, oversized: true, reason: "row_too_large", bytes: 9 })).toBe(true);
    expect([...state.rows.values()]).toEqual([{ id: 1 }]);
    expect([...state.oversized.values()]).toEqual([{ schema: "public", table: "t", key: { id: 2 } }]);
    expect(applyChange(state, { op: "TRUNCATE", schema: "public", table: "t" })).toBe(true);
    expect(state.rows.size + state.oversized.size).toBe(0);
  });
});

describe("Coalescer and a shard's sync answers", () => {
  it("answers every request with its own answer, in order, with one call in flight at a time, and calls carrying the requests that waited", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat({ max: 3 }), { minLength: 1, maxLength: 60 }), fc.integer({ min: 1, max: 8 }), async (arrivals, max) => {
        let inFlight = 0;
        let most = 0;
        const calls: number[][] = [];
        const c = new Coalescer<number, string>(async (requests) => {
          inFlight++;
          most = Math.max(most, inFlight);
          calls.push(requests);
          await new Promise((r) => setTimeout(r, 1));
          inFlight--;
          return requests.map((r) => `answer ${r}`);
        }, max);
        // Requests arrive in groups (0-3 microtask turns apart), while calls are under way.
        const answers: Promise<string>[] = [];
        for (const [i, gap] of arrivals.entries()) {
          for (let t = 0; t < gap; t++) await Promise.resolve();
          answers.push(c.request(i));
        }
        expect(await Promise.all(answers)).toEqual(arrivals.map((_, i) => `answer ${i}`));
        expect(most).toBe(1);
        expect(calls.flat()).toEqual(arrivals.map((_, i) => i));
        expect(calls.every((b) => b.length >= 1 && b.length <= max)).toBe(true);
        expect(c.calls).toBe(calls.length);
        expect(c.requests).toBe(arrivals.length);
        // The first goes alone; every later one arrives (microtasks apart) while it is under way,
        // so they go together, `max` to a call.
        expect(calls.length).toBe(1 + Math.ceil((arrivals.length - 1) / max));
      }),
      { numRuns: 50 },
    );
  });

  it("fails every request of a call that throws, and goes on with the next call", async () => {
    let call = 0;
    const c = new Coalescer<number, number>(async (requests) => {
      if (call++ === 0) throw new Error("root unavailable");
      return requests.map((r) => r * 10);
    }, 10);
    const first = c.request(1);
    const waiting = [c.request(2), c.request(3)];
    await expect(first).rejects.toThrow("root unavailable");
    expect(await Promise.all(waiting)).toEqual([20, 30]);
  });

  it("sends a replay shared by many joins once, and gives each join its frames back", () => {
    const replay = ['{"type":"events","events":[1]}'];
    const joins: Join[] = [
      { ok: true, channel: "c", epoch: "e", seq: 5, frames: replay },
      { ok: false, code: "invalid_filter", message: "bad" },
      { ok: true, channel: "c", epoch: "e", seq: 5, frames: replay },
      { ok: true, channel: "c", epoch: "e", seq: 5, frames: [] },
    ];
    const packed = packJoins(joins);
    expect(packed.frameSets).toHaveLength(2);
    expect(unpackJoins(structuredClone(packed))).toEqual(joins);
  });
});
