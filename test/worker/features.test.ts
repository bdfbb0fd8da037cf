/**
 * Retained state, row filters, presence, client broadcast and conflation, inside workerd, across
 * hibernation (evictDurableObject) where it matters.
 */

import { evictDurableObject, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { PresenceMember, ServerFrame, SnapshotRow } from "../../protocol/index.ts";
import { change, event, ingest, Socket, tokenFor } from "./helpers.ts";

const stubOf = (channel: string) => env.CHANNEL.get(env.CHANNEL.idFromName(channel));
const framesOf = <T extends ServerFrame["type"]>(s: Socket, type: T) => s.frames.filter((f): f is Extract<ServerFrame, { type: T }> => f.type === type);
const filterQuery = (f: unknown) => `?filter=${encodeURIComponent(JSON.stringify(f))}`;

describe("retained state", () => {
  it("sends a new subscriber the latest version of every row, then only events after the snapshot's seq", async () => {
    await ingest([
      change("ret", "INSERT", { id: 1, title: "a", done: false }),
      change("ret", "INSERT", { id: 2, title: "b", done: false }),
      change("ret", "INSERT", { id: 3, title: "c", done: false }),
    ]);
    await ingest([
      change("ret", "UPDATE", { id: 2, title: "b2", done: true }, { old: { id: 2, title: "b", done: false } }),
      change("ret", "DELETE", { id: 3, title: "c", done: false }),
    ]);
    const sock = await Socket.open("ret");
    const [welcome, snapshot] = await sock.frameCount(2);
    expect(welcome).toMatchObject({ type: "welcome", seq: 5 });
    expect(snapshot).toMatchObject({ type: "snapshot", seq: 5 });
    const rows = (snapshot as { rows: SnapshotRow[] }).rows;
    expect(rows.map((r) => [r.key, r.row, r.seq])).toEqual([
      [{ id: 1 }, { id: 1, title: "a", done: false }, 1],
      [{ id: 2 }, { id: 2, title: "b2", done: true }, 4],
    ]);
    expect(rows[0]).toMatchObject({ schema: "public", table: "items" });
    await ingest([change("ret", "INSERT", { id: 4, title: "d", done: false })]);
    const events = await sock.eventCount(1);
    expect(events.map((e) => e.seq)).toEqual([6]);
  });

  it("keeps its state across eviction, clears a table on TRUNCATE, and ignores events not marked retain", async () => {
    await ingest([
      change("ret2", "INSERT", { id: 1 }),
      change("ret2", "INSERT", { id: 1 }, { table: "other" }),
      change("ret2", "INSERT", { id: 9 }, { retain: false }),
    ]);
    await evictDurableObject(stubOf("ret2"));
    await ingest([change("ret2", "TRUNCATE", null)]);
    const sock = await Socket.open("ret2");
    const [, snapshot] = await sock.frameCount(2);
    expect((snapshot as { rows: SnapshotRow[] }).rows.map((r) => `${r.table}:${JSON.stringify(r.key)}`)).toEqual(['other:{"id":1}']);
  });

  it("hands the state over with a reset, so a client too far behind reloads without the database", async () => {
    const first = await Socket.open("ret-gap");
    const [w] = await first.frameCount(1);
    first.ws.close();
    await ingest(Array.from({ length: 60 }, (_, i) => change("ret-gap", "INSERT", { id: i % 5, v: i })));
    const back = await Socket.open("ret-gap", `?since=1&epoch=${(w as { epoch: string }).epoch}`);
    const frames = await back.frameCount(3);
    expect(frames.map((f) => f.type)).toEqual(["welcome", "reset", "snapshot"]);
    expect((frames[2] as { rows: SnapshotRow[] }).rows.map((r) => r.row)).toEqual([0, 1, 2, 3, 4].map((id) => ({ id, v: 55 + id })));
  });

  it("stops retaining past STATE_MAX_ROWS (20 here) and says so in every snapshot", async () => {
    await ingest(Array.from({ length: 25 }, (_, i) => change("ret-big", "INSERT", { id: i })));
    const sock = await Socket.open("ret-big");
    const [, snapshot] = await sock.frameCount(2);
    expect(snapshot).toEqual({ type: "snapshot", seq: 25, rows: [], overflow: true });
    const stats = await runInDurableObject(stubOf("ret-big"), (o) => o.stats());
    expect(stats.retained).toEqual({ rows: 0, bytes: 0, overflow: true });
  });

  it("sends no snapshot on a channel that never retained anything", async () => {
    await ingest([event("plain-ch")]);
    const sock = await Socket.open("plain-ch");
    await ingest([event("plain-ch", "next")]);
    await sock.eventCount(1);
    expect(sock.frames.map((f) => f.type)).toEqual(["welcome", "events"]);
  });
});

describe("row filters", () => {
  const open = { done: { eq: false } };

  it("delivers only matching events, and an update leaving the filter (its old row matched)", async () => {
    const filtered = await Socket.open("flt", filterQuery(open));
    const all = await Socket.open("flt");
    await Promise.all([filtered.frameCount(1), all.frameCount(1)]);
    await ingest([
      change("flt", "INSERT", { id: 1, done: false }, { retain: false }),
      change("flt", "INSERT", { id: 2, done: true }, { retain: false }),
      change("flt", "UPDATE", { id: 1, done: true }, { old: { id: 1, done: false }, retain: false }),
      change("flt", "UPDATE", { id: 2, done: true, x: 1 }, { old: { id: 2, done: true }, retain: false }),
      change("flt", "DELETE", { id: 2, done: true }, { retain: false }),
    ]);
    expect((await all.eventCount(5)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    await all.ws.close();
    const events = await filtered.eventCount(2);
    expect(events.map((e) => e.seq)).toEqual([1, 3]);
  });

  it("applies to replay and to the snapshot, and keeps applying after eviction", async () => {
    const first = await Socket.open("flt2", filterQuery(open));
    const [w] = await first.frameCount(1);
    first.ws.close();
    await ingest([
      change("flt2", "INSERT", { id: 1, done: false }),
      change("flt2", "INSERT", { id: 2, done: true }),
      change("flt2", "INSERT", { id: 3, done: false }),
    ]);
    const resumed = await Socket.open("flt2", `${filterQuery(open)}&since=0&epoch=${(w as { epoch: string }).epoch}`);
    expect((await resumed.eventCount(2)).map((e) => e.seq)).toEqual([1, 3]);
    const fresh = await Socket.open("flt2", filterQuery(open));
    const [, snapshot] = await fresh.frameCount(2);
    expect((snapshot as { rows: SnapshotRow[] }).rows.map((r) => r.key)).toEqual([{ id: 1 }, { id: 3 }]);
    await evictDurableObject(stubOf("flt2"));
    await ingest([change("flt2", "INSERT", { id: 4, done: true }), change("flt2", "INSERT", { id: 5, done: false })]);
    expect((await fresh.eventCount(1)).map((e) => e.seq)).toEqual([5]);
  });

  it.each([
    ["not JSON", "{nope", /not JSON/],
    ["an unknown operator", JSON.stringify({ a: { like: "x%" } }), /unknown operator "like"/],
    ["in without an array", JSON.stringify({ a: { in: 3 } }), /a\.in must be an array/],
    ["no conditions", JSON.stringify({}), /no conditions/],
  ])("refuses a filter that is %s with an error frame naming the problem", async (_, filter, message) => {
    const sock = await Socket.open("flt-bad", `?filter=${encodeURIComponent(filter)}`);
    await sock.until(() => sock.closed);
    expect(sock.frames).toEqual([expect.objectContaining({ type: "error", code: "invalid_filter", message: expect.stringMatching(message) })]);
    expect(sock.closed!.code).toBe(1008);
  });
});

describe("presence", () => {
  const members = (s: Socket): PresenceMember[] => {
    // Replays the frames the way a client keeps its member list.
    const list = new Map<string, PresenceMember>();
    for (const f of s.frames) {
      if (f.type === "presence") {
        list.clear();
        for (const m of f.members) list.set(m.id, m);
      } else if (f.type === "presence_diff") {
        for (const m of f.leaves) list.delete(m.id);
        for (const m of f.joins) list.set(m.id, m);
      }
    }
    return [...list.values()];
  };

  it("lists who is here on join, announces joins, state changes and leaves, across hibernation", async () => {
    const alice = await Socket.open("room", "?presence=1", { token: await tokenFor(["room"], "alice") });
    await alice.until(() => framesOf(alice, "presence").length > 0);
    const bob = await Socket.open("room", "?presence=1", { token: await tokenFor(["room"], "bob") });
    await bob.until(() => framesOf(bob, "presence").length > 0);
    expect(
      members(bob)
        .map((m) => m.user)
        .sort(),
    ).toEqual(["alice", "bob"]);
    await alice.until(() => members(alice).length === 2);
    // A lurker (no presence=1) is not listed and gets no presence frames.
    const lurker = await Socket.open("room");
    await lurker.frameCount(1);

    bob.ws.send(JSON.stringify({ type: "presence", state: { typing: true } }));
    await alice.until(() => members(alice).find((m) => m.user === "bob")?.state);
    expect(members(alice).find((m) => m.user === "bob")!.state).toEqual({ typing: true });

    await evictDurableObject(stubOf("room")); // hibernate between join and leave
    bob.ws.close(1000, "bye");
    await alice.until(() => members(alice).length === 1);
    expect(members(alice).map((m) => m.user)).toEqual(["alice"]);
    expect(framesOf(lurker, "presence")).toEqual([]);
    expect(framesOf(lurker, "presence_diff")).toEqual([]);
  });

  it("refuses a presence state over 1 KiB, and from a socket that did not join presence", async () => {
    const sock = await Socket.open("room2", "?presence=1");
    await sock.frameCount(2);
    sock.ws.send(JSON.stringify({ type: "presence", state: "x".repeat(2000) }));
    await sock.until(() => framesOf(sock, "error").length > 0);
    expect(framesOf(sock, "error")[0]).toMatchObject({ code: "invalid_frame" });
    const quiet = await Socket.open("room2");
    await quiet.frameCount(1);
    quiet.ws.send(JSON.stringify({ type: "presence", state: 1 }));
    await quiet.until(() => framesOf(quiet, "error").length > 0);
    expect(framesOf(quiet, "error")[0]!.message).toMatch(/presence=1/);
  });
});

describe("client broadcast", () => {
  it("relays a broadcast to the other sockets when the token may publish, never stores it, and refuses it otherwise", async () => {
    const sender = await Socket.open("chat", "", { token: await tokenFor(["chat"], "carol", { publish: ["chat"] }) });
    const reader = await Socket.open("chat", "", { token: await tokenFor(["chat"], "dave") });
    await Promise.all([sender.frameCount(1), reader.frameCount(1)]);
    sender.ws.send(JSON.stringify({ type: "broadcast", event: "cursor", data: { x: 1, y: 2 } }));
    await reader.until(() => framesOf(reader, "broadcast").length > 0);
    expect(framesOf(reader, "broadcast")[0]).toMatchObject({ event: "cursor", data: { x: 1, y: 2 }, from: { user: "carol" } });
    expect(framesOf(sender, "broadcast")).toEqual([]);
    const stats = await runInDurableObject(stubOf("chat"), (o) => o.stats());
    expect(stats.seq).toBe(0);

    reader.ws.send(JSON.stringify({ type: "broadcast", event: "cursor", data: {} }));
    await reader.until(() => framesOf(reader, "error").length > 0);
    expect(framesOf(reader, "error")[0]).toMatchObject({ code: "publish_forbidden" });
    sender.ws.send(JSON.stringify({ type: "broadcast", event: "bad name!" }));
    await sender.until(() => framesOf(sender, "error").length > 0);
    expect(framesOf(sender, "error")[0]).toMatchObject({ code: "invalid_frame" });
  });
});

describe("conflation (CONFLATE=conf:*=50 here)", () => {
  it("sends at most one update per row per window: the latest, with other events untouched", async () => {
    const sock = await Socket.open("conf:dash");
    await sock.frameCount(1);
    await ingest(Array.from({ length: 10 }, (_, i) => change("conf:dash", "UPDATE", { id: 1, v: i }, { old: { id: 1, v: i - 1 }, retain: false })));
    await ingest([change("conf:dash", "UPDATE", { id: 2, v: 0 }, { retain: false }), event("conf:dash", "note")]);
    expect(sock.events).toEqual([]); // nothing until the window ends
    expect(await runDurableObjectAlarm(stubOf("conf:dash"))).toBe(true);
    const events = await sock.eventCount(3);
    expect(events.map((e) => [e.seq, (e.data as { new?: { v: number } }).new?.v ?? e.data])).toEqual([
      [10, 9],
      [11, 0],
      [12, "note"],
    ]);
    // The log keeps everything: a resuming client is replayed all twelve.
    const [w] = sock.frames;
    const resumed = await Socket.open("conf:dash", `?since=0&epoch=${(w as { epoch: string }).epoch}`);
    expect((await resumed.eventCount(12)).length).toBe(12);
  });
});
