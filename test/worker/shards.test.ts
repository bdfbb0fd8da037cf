/**
 * Sharded channels (SHARDS=live:*=4 here), inside workerd: sockets spread over shard objects see
 * the channel exactly as on its root (seq, ids, epoch, resume, snapshot, filters, presence,
 * broadcast), and a shard that missed a delivery fills the gap from the root.
 */

import { runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { ChannelEvent, PresenceMember, ServerFrame } from "../../protocol/index.ts";
import { shardName } from "../../worker/channel.ts";
import { resolveWorkerConfig } from "../../worker/config.ts";
import type { Env } from "../../worker/env.ts";
import { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, SHARD_HEADER, USER_HEADER } from "../../worker/hub.ts";
import { change, event, ingest, Socket } from "./helpers.ts";

const root = (channel: string) => env.CHANNEL.get(env.CHANNEL.idFromName(channel));
const shard = (channel: string, i: number) => env.SHARD.get(env.SHARD.idFromName(shardName(channel, i)));

/** A socket placed on shard `i` (the Worker picks one at random; tests pick it). */
async function onShard(channel: string, i: number, query = "", headers: Record<string, string> = {}): Promise<Socket> {
  const res = await shard(channel, i).fetch(`http://edge/parties/main/${channel}${query}`, {
    headers: { Upgrade: "websocket", [CHANNEL_NAME_HEADER]: channel, [SHARD_HEADER]: String(i), ...headers },
  });
  if (!res.webSocket) throw new Error(`upgrade failed: ${res.status}`);
  return new Socket(res.webSocket);
}

const seqIds = (events: ChannelEvent[]) => events.map((e) => `${e.seq}:${e.id}`);
const framesOf = <T extends ServerFrame["type"]>(s: Socket, type: T) => s.frames.filter((f): f is Extract<ServerFrame, { type: T }> => f.type === type);

describe("sharded channels", () => {
  it("gives sockets on every shard the same events, seqs, ids and epoch", async () => {
    const sockets = await Promise.all([0, 1, 2, 3].map((i) => onShard("live:one", i)));
    const viaWorker = await Socket.open("live:one"); // placed by the Worker
    const all = [...sockets, viaWorker];
    for (const s of all) await s.frameCount(1);
    for (let b = 0; b < 5; b++) await ingest(Array.from({ length: 7 }, (_, i) => event("live:one", b * 7 + i)));
    const expected = seqIds(await sockets[0]!.eventCount(35));
    expect(expected.map((x) => Number(x.split(":")[0]))).toEqual(Array.from({ length: 35 }, (_, i) => i + 1));
    for (const s of all) expect(seqIds(await s.eventCount(35))).toEqual(expected);
    const { epoch } = await runInDurableObject(root("live:one"), (o: { stats(): Promise<{ epoch: string }> }) => o.stats());
    for (const s of all) expect(s.frames[0]).toMatchObject({ type: "welcome", epoch });
    const stats = await runInDurableObject(root("live:one"), (o: { stats(): Promise<{ shards: number; sockets: number }> }) => o.stats());
    expect(stats).toMatchObject({ shards: 4, sockets: 5 });
  });

  it("resumes a client that comes back on another shard with exactly what it missed", async () => {
    const first = await onShard("live:resume", 0);
    const [w] = await first.frameCount(1);
    await ingest(Array.from({ length: 5 }, (_, i) => event("live:resume", i + 1)));
    await first.eventCount(5);
    first.ws.close();
    await ingest(Array.from({ length: 5 }, (_, i) => event("live:resume", i + 6)));
    const back = await onShard("live:resume", 2, `?since=5&epoch=${(w as { epoch: string }).epoch}`);
    await ingest([event("live:resume", 11)]);
    expect((await back.eventCount(6)).map((e) => [e.seq, e.data])).toEqual([6, 7, 8, 9, 10, 11].map((n) => [n, n]));
    expect(back.frames[0]).toMatchObject({ type: "welcome", seq: 10 });
  });

  it("sends the root's snapshot, filtered, to a socket on a shard", async () => {
    await ingest([change("live:state", "INSERT", { id: 1, done: false }), change("live:state", "INSERT", { id: 2, done: true })]);
    const filtered = await onShard("live:state", 1, `?filter=${encodeURIComponent(JSON.stringify({ done: { eq: false } }))}`);
    const [, snapshot] = await filtered.frameCount(2);
    expect(snapshot).toMatchObject({ type: "snapshot", seq: 2, rows: [{ key: { id: 1 } }] });
    await ingest([change("live:state", "INSERT", { id: 3, done: true }), change("live:state", "INSERT", { id: 4, done: false })]);
    expect((await filtered.eventCount(1)).map((e) => e.seq)).toEqual([4]);
  });

  it("answers the joins that reach a shard together in one call to the root, each with its own filter and position", async () => {
    await ingest([change("live:many", "INSERT", { id: 1, done: false }), change("live:many", "INSERT", { id: 2, done: true })]);
    await ingest(Array.from({ length: 3 }, (_, i) => event("live:many", i + 1)));
    const [w] = await (await onShard("live:many", 3)).frameCount(1);
    const epoch = (w as { epoch: string }).epoch;
    const done = `&filter=${encodeURIComponent(JSON.stringify({ done: { eq: true } }))}`;
    // Fresh snapshots (plain and filtered) and resumes from two positions, all at once on one shard, beside a refused join.
    const queries = [
      ...Array.from({ length: 6 }, () => "?snapshot=1"),
      ...Array.from({ length: 4 }, () => `?snapshot=1${done}`),
      ...Array.from({ length: 5 }, () => `?since=2&epoch=${epoch}`),
      ...Array.from({ length: 5 }, () => `?since=4&epoch=${epoch}`),
    ];
    const before = await runInDurableObject(root("live:many"), (o: { stats(): Promise<{ syncs: { calls: number; sockets: number } }> }) => o.stats());
    const sockets = await Promise.all(queries.map((q) => onShard("live:many", 0, q)));
    const refused = await shard("live:many", 0).fetch(`http://edge/parties/main/live:many?filter=${encodeURIComponent("{not json")}`, {
      headers: { Upgrade: "websocket", [CHANNEL_NAME_HEADER]: "live:many", [SHARD_HEADER]: "0" },
    });
    const bad = new Socket(refused.webSocket!);
    for (const s of sockets) await s.until(() => s.frames.length >= 2 || undefined);
    const after = await runInDurableObject(root("live:many"), (o: { stats(): Promise<{ syncs: { calls: number; sockets: number } }> }) => o.stats());
    expect(after.syncs.sockets - before.syncs.sockets).toBe(queries.length); // the bad filter is refused by the shard itself
    expect(after.syncs.calls - before.syncs.calls).toBeLessThan(queries.length); // coalesced
    const rest = (s: Socket) => s.frames.slice(1);
    for (const s of sockets.slice(0, 6)) expect(rest(s)).toMatchObject([{ type: "snapshot", seq: 5, rows: [{ key: { id: 1 } }, { key: { id: 2 } }] }]);
    for (const s of sockets.slice(6, 10)) expect(rest(s)).toMatchObject([{ type: "snapshot", seq: 5, rows: [{ key: { id: 2 } }] }]);
    for (const s of sockets.slice(10, 15)) expect((await s.eventCount(3)).map((e) => e.seq)).toEqual([3, 4, 5]);
    for (const s of sockets.slice(15)) expect((await s.eventCount(1)).map((e) => e.seq)).toEqual([5]);
    await bad.until(() => bad.closed || undefined);
    expect(bad.frames).toContainEqual(expect.objectContaining({ type: "error", code: "invalid_filter" }));
  });

  it("keeps one presence list across shards, and relays broadcasts between them", async () => {
    const alice = await onShard("live:room", 0, "?presence=1", { [USER_HEADER]: "alice", [CAN_PUBLISH_HEADER]: "1" });
    await alice.until(() => framesOf(alice, "presence").length > 0);
    const bob = await onShard("live:room", 3, "?presence=1", { [USER_HEADER]: "bob" });
    await bob.until(() => framesOf(bob, "presence").length > 0);
    const users = (members: PresenceMember[]) => members.map((m) => m.user).sort();
    expect(users(framesOf(bob, "presence")[0]!.members)).toEqual(["alice", "bob"]);
    await alice.until(() => framesOf(alice, "presence_diff").some((d) => d.joins.some((m) => m.user === "bob")));

    alice.ws.send(JSON.stringify({ type: "broadcast", event: "wave", data: 1 }));
    await bob.until(() => framesOf(bob, "broadcast").length > 0);
    expect(framesOf(bob, "broadcast")[0]).toMatchObject({ event: "wave", from: { user: "alice" } });
    expect(framesOf(alice, "broadcast")).toEqual([]);

    bob.ws.send(JSON.stringify({ type: "presence", state: { typing: true } }));
    await alice.until(() => framesOf(alice, "presence_diff").some((d) => d.joins.some((m) => m.user === "bob" && m.state)));
    bob.ws.close(1000, "bye");
    await alice.until(() => framesOf(alice, "presence_diff").some((d) => d.leaves.some((m) => m.user === "bob")));
  });

  it("fills a gap from the root when a delivery to a shard was lost", async () => {
    const sock = await onShard("live:gap", 2);
    await sock.frameCount(1);
    await ingest([event("live:gap", 1), event("live:gap", 2)]);
    await sock.eventCount(2);
    // Events 3 and 4 reach the root's log but their delivery to the shards is lost.
    await runInDurableObject(root("live:gap"), (channel, state) => {
      const o = channel as unknown as { seq: number }; // its private counter, set as a lost publish would leave it
      for (const n of [3, 4]) {
        state.storage.sql.exec(
          "insert into log (seq, id, event, data, parts, ts, stored_at) values (?, ?, 'test', ?, 0, 1, ?)",
          n,
          `lost-${n}`,
          String(n),
          Date.now(),
        );
      }
      o.seq = 4;
      state.storage.sql.exec("update meta set value = '4' where key = 'seq'");
    });
    await ingest([event("live:gap", 5)]);
    expect((await sock.eventCount(5)).map((e) => [e.seq, e.data])).toEqual([1, 2, 3, 4, 5].map((n) => [n, n]));
  });

  it("coalesces publishes that arrive while a shard delivery is in flight, keeping order", async () => {
    const sockets = await Promise.all([0, 1, 2, 3].map((i) => onShard("live:burst", i)));
    for (const s of sockets) await s.frameCount(1);
    // 60 ingests at once: each is its own publish at the root (seq 1..60, in arrival order).
    const answers = await Promise.all(Array.from({ length: 60 }, (_, n) => ingest([event("live:burst", n)])));
    expect(answers.every((a) => a.status === 200 && a.body.accepted === 1)).toBe(true);
    const expected = seqIds(await sockets[0]!.eventCount(60));
    expect(expected.map((x) => Number(x.split(":")[0]))).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
    for (const s of sockets) expect(seqIds(await s.eventCount(60))).toEqual(expected);
    const stats = await runInDurableObject(root("live:burst"), (o: { stats(): Promise<{ shardDeliveries: number }> }) => o.stats());
    // Without coalescing: 60 publishes x 4 shards = 240 RPCs.
    expect(stats.shardDeliveries).toBeLessThan(240);
    expect(stats.shardDeliveries).toBeGreaterThanOrEqual(4);
    // Fewer frames than events reached a socket: several events shared one frame.
    expect(sockets[0]!.frames.filter((f) => f.type === "events").length).toBeLessThan(60);
  });
});

describe("shard configuration", () => {
  const config = (vars: Record<string, string>) => () => resolveWorkerConfig({ ...vars } as unknown as Env);

  it("reads SHARDS patterns and AUTO_SHARD_SOCKETS, off by default", () => {
    expect(config({ SHARDS: "live:*=8, feed:{sub}=2" })()).toMatchObject({
      shards: [
        { pattern: "live:*", count: 8 },
        { pattern: "feed:{sub}", count: 2 },
      ],
      autoShardSockets: 0,
    });
    expect(config({ AUTO_SHARD_SOCKETS: "5000" })().autoShardSockets).toBe(5000);
  });

  it("refuses settings it cannot honour, saying how to fix them", () => {
    expect(config({ SHARDS: "live:*=1" })).toThrow(/SHARDS entries are <channel pattern>=<2-256 shards>, e.g. "live:\*=8"; got "live:\*=1"/);
    expect(config({ SHARDS: "live:*=300" })).toThrow(/2-256 shards/);
    expect(config({ AUTO_SHARD_SOCKETS: "-1" })).toThrow(/AUTO_SHARD_SOCKETS must be an integer from 0 to 32768/);
    expect(config({ AUTO_SHARD_SOCKETS: "20000" })).toThrow(/must not exceed MAX_SOCKETS_PER_CHANNEL \(10000\)/);
    expect(config({ AUTO_SHARD_SOCKETS: "20000", MAX_SOCKETS_PER_CHANNEL: "30000" })().autoShardSockets).toBe(20000);
  });
});
