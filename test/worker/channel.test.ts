/** The Channel Durable Object inside workerd: sockets, hibernation, resume, large events. */

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { resolveWorkerConfig } from "../../worker/config.ts";
import { EventLog } from "../../worker/event-log.ts";
import { event, ingest, Socket } from "./helpers.ts";

const stubOf = (channel: string) => env.CHANNEL.get(env.CHANNEL.idFromName(channel));

async function welcomeOf(sock: Socket): Promise<{ epoch: string; seq: number }> {
  const [w] = await sock.frameCount(1);
  if (w?.type !== "welcome") throw new Error(`first frame was ${JSON.stringify(w)}`);
  return w;
}

describe("upgrade", () => {
  it("refuses an invalid channel name with 400 and a plain GET with 426, as JSON", async () => {
    const bad = await exports.default.fetch("http://edge/parties/main/has%20space", { headers: { Upgrade: "websocket" } });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: { code: "invalid_channel" } });
    const plain = await exports.default.fetch("http://edge/parties/main/todos");
    expect(plain.status).toBe(426);
    expect(await plain.json()).toMatchObject({ error: { code: "upgrade_required" } });
  });

  it("answers a non-numeric since with an error frame, then closes 1008", async () => {
    const sock = await Socket.open("bad-since", "?since=abc&epoch=x");
    await sock.until(() => sock.closed);
    expect(sock.frames.map((f) => f.type)).toEqual(["error"]);
    expect(sock.frames[0]).toMatchObject({ code: "invalid_query" });
    expect(sock.closed!.code).toBe(1008);
  });

  it("answers ping with pong (runtime auto-response) and any other message with an error frame", async () => {
    const sock = await Socket.open("chatty");
    await sock.frameCount(1);
    sock.ws.send("ping");
    await sock.until(() => sock.raw.includes("pong"));
    sock.ws.send(JSON.stringify({ type: "publish", data: "x" }));
    const frames = await sock.frameCount(2);
    expect(frames[1]).toMatchObject({ type: "error", code: "unsupported_frame" });
  });
});

describe("hibernation", () => {
  it("keeps its sockets and its seq when evicted, and events published afterwards reach them", async () => {
    const sockets = await Promise.all([Socket.open("hib"), Socket.open("hib")]);
    await ingest([event("hib", "before-1"), event("hib", "before-2")]);
    for (const s of sockets) await s.eventCount(2);
    const epochBefore = (await welcomeOf(sockets[0]!)).epoch;

    await evictDurableObject(stubOf("hib"));

    await ingest([event("hib", "after")]);
    for (const s of sockets) {
      const events = await s.eventCount(3);
      expect(events.map((e) => [e.seq, e.data])).toEqual([
        [1, "before-1"],
        [2, "before-2"],
        [3, "after"],
      ]);
    }
    // Same history after waking: same epoch, and a newcomer is welcomed at seq 3.
    const late = await Socket.open("hib");
    expect(await welcomeOf(late)).toMatchObject({ epoch: epochBefore, seq: 3 });
  });

  it("still answers pings while evicted without losing sockets", async () => {
    const sock = await Socket.open("hib-ping");
    await sock.frameCount(1);
    await evictDurableObject(stubOf("hib-ping"));
    sock.ws.send("ping");
    await sock.until(() => sock.raw.includes("pong"));
    await ingest([event("hib-ping", "still here")]);
    expect((await sock.eventCount(1))[0]!.data).toBe("still here");
  });
});

describe("resume", () => {
  it("builds a replay once for the sockets resuming from the same point with the same filter, and afresh once the channel moves", async () => {
    const channel = "shared-replay";
    const first = await Socket.open(channel);
    const { epoch } = await welcomeOf(first);
    first.ws.close();
    await ingest(Array.from({ length: 30 }, (_, i) => event(channel, { n: i + 1, even: (i + 1) % 2 === 0 })));
    const resume = (query: string) => Socket.open(channel, `?since=5&epoch=${epoch}${query}`);
    const even = `&filter=${encodeURIComponent(JSON.stringify({ even: { eq: true } }))}`;
    // Ten sockets back from seq 5 (a deploy's reconnects), two of them filtered.
    const plain = await Promise.all(Array.from({ length: 8 }, () => resume("")));
    const filtered = await Promise.all([resume(even), resume(even)]);
    for (const s of plain) expect((await s.eventCount(25)).map((e) => e.seq)).toEqual(Array.from({ length: 25 }, (_, i) => i + 6));
    for (const s of filtered) expect((await s.eventCount(13)).map((e) => (e.data as { n: number }).n)).toEqual(Array.from({ length: 13 }, (_, i) => 6 + 2 * i));
    // Every socket got the same replay text as the others of its filter.
    const replayText = (s: Socket) => s.raw.slice(1).join("\n");
    expect(new Set(plain.map(replayText)).size).toBe(1);
    expect(new Set(filtered.map(replayText)).size).toBe(1);
    let stats = await stubOf(channel).stats();
    expect(stats.replays).toEqual({ built: 2, shared: 8 });
    // A publish moves the channel: the next socket from seq 5 gets the new event too, in a replay built for it.
    await ingest([event(channel, { n: 31, even: false })]);
    const late = await resume("");
    expect((await late.eventCount(26)).at(-1)).toMatchObject({ seq: 31 });
    stats = await stubOf(channel).stats();
    expect(stats.replays).toEqual({ built: 3, shared: 8 });
    for (const s of [...plain, ...filtered, late]) s.ws.close();
  });

  it("replays exactly the events after since, then continues live, with no overlap", async () => {
    const first = await Socket.open("resume");
    const { epoch } = await welcomeOf(first);
    await ingest([event("resume", 1), event("resume", 2)]);
    await first.eventCount(2);
    first.ws.close();
    await ingest([event("resume", 3), event("resume", 4), event("resume", 5)]);
    const again = await Socket.open("resume", `?since=2&epoch=${epoch}`);
    await ingest([event("resume", 6)]);
    const events = await again.eventCount(4);
    expect(events.map((e) => [e.seq, e.data])).toEqual([
      [3, 3],
      [4, 4],
      [5, 5],
      [6, 6],
    ]);
    expect(again.frames[0]).toMatchObject({ type: "welcome", seq: 5 });
  });

  it("replays across an eviction: the log is in SQLite, not memory", async () => {
    const first = await Socket.open("resume-evict");
    const { epoch } = await welcomeOf(first);
    first.ws.close();
    await ingest([event("resume-evict", "a"), event("resume-evict", "b")]);
    await evictDurableObject(stubOf("resume-evict"), { webSockets: "close" });
    const again = await Socket.open("resume-evict", `?since=0&epoch=${epoch}`);
    expect((await again.eventCount(2)).map((e) => e.data)).toEqual(["a", "b"]);
  });

  it("answers reset {reason: epoch} to a client from another history", async () => {
    await ingest([event("resume-epoch")]);
    const sock = await Socket.open("resume-epoch", "?since=1&epoch=some-other-epoch");
    const frames = await sock.frameCount(2);
    expect(frames[1]).toMatchObject({ type: "reset", reason: "epoch", seq: 1 });
    expect(sock.events).toEqual([]);
  });

  it("answers reset {reason: epoch} to a since beyond the channel's seq", async () => {
    const sock0 = await Socket.open("resume-ahead");
    const { epoch } = await welcomeOf(sock0);
    const sock = await Socket.open("resume-ahead", `?since=99&epoch=${epoch}`);
    expect((await sock.frameCount(2))[1]).toMatchObject({ type: "reset", reason: "epoch" });
  });

  it("answers reset {reason: gap} when the missed events are older than the log keeps (REPLAY_MAX_EVENTS=50 here)", async () => {
    const sock0 = await Socket.open("resume-gap");
    const { epoch } = await welcomeOf(sock0);
    sock0.ws.close();
    await ingest(Array.from({ length: 60 }, (_, i) => event("resume-gap", i + 1)));
    const tooOld = await Socket.open("resume-gap", `?since=5&epoch=${epoch}`);
    const frames = await tooOld.frameCount(2);
    expect(frames[1]).toMatchObject({ type: "reset", reason: "gap", seq: 60 });
    // The newest 50 are still replayable.
    const recent = await Socket.open("resume-gap", `?since=10&epoch=${epoch}`);
    expect((await recent.eventCount(50)).map((e) => e.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 11));
  });
});

describe("large events", () => {
  it("stores and replays a 3 MB event (over SQLite's 2 MB row limit) exactly, surrogate pairs included", async () => {
    const data = { text: "😀".repeat(400_000) + "x".repeat(1_500_000) };
    const sock0 = await Socket.open("big");
    const { epoch } = await welcomeOf(sock0);
    expect((await ingest([event("big", data)])).status).toBe(200);
    expect((await sock0.eventCount(1))[0]!.data).toEqual(data);
    await evictDurableObject(stubOf("big"), { webSockets: "close" });
    const again = await Socket.open("big", `?since=0&epoch=${epoch}`);
    expect((await again.eventCount(1))[0]!.data).toEqual(data);
    const parts = await runInDurableObject(stubOf("big"), (_, state) => state.storage.sql.exec("select count(*) as n from log_part").one().n);
    expect(parts).toBeGreaterThan(1);
  });
});

describe("stats", () => {
  it("serves a channel's counters to a request signed with the ingest secret, and counts wake-ups", async () => {
    const { signBody, SIGNATURE_HEADER } = await import("../../protocol/index.ts");
    const path = "/channels/stats-ch/stats";
    const unsigned = await exports.default.fetch(`http://edge${path}`);
    expect(unsigned.status).toBe(401);
    const sock = await Socket.open("stats-ch");
    await ingest([event("stats-ch"), event("stats-ch")]);
    await sock.eventCount(2);
    const read = async () =>
      (
        await exports.default.fetch(`http://edge${path}`, { headers: { [SIGNATURE_HEADER]: await signBody(env.INGEST_SECRET!, `GET ${path}`) } })
      ).json() as Promise<Record<string, unknown>>;
    const before = await read();
    expect(before).toMatchObject({ channel: "stats-ch", seq: 2, sockets: 1, replayLogEvents: 2, replayLogOldestSeq: 1 });
    expect(typeof before.lastPublishAt).toBe("string");
    await evictDurableObject(stubOf("stats-ch"));
    const after = await read();
    expect(after.wakes).toBe((before.wakes as number) + 1);
    expect(after.sockets).toBe(1);
  });
});

describe("trimming the log and the dedupe ids", () => {
  const logSeqs = (channel: string) =>
    runInDurableObject(stubOf(channel), (_, state) =>
      state.storage.sql
        .exec<{ seq: number }>("select seq from log order by seq")
        .toArray()
        .map((r) => r.seq),
    );
  const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  it("drops log rows past REPLAY_MAX_AGE_SECONDS and past REPLAY_MAX_EVENTS (50 here), and keeps the rest", async () => {
    const channel = "trim-log";
    expect((await ingest(range(1, 20).map(() => event(channel)))).status).toBe(200);
    // Two days old, past the default bound of one day.
    await runInDurableObject(stubOf(channel), (_, state) => {
      state.storage.sql.exec("update log set stored_at = stored_at - ?", 2 * 86_400_000);
    });
    await evictDurableObject(stubOf(channel)); // a woken object trims on its first publish
    expect((await ingest(range(21, 25).map(() => event(channel)))).status).toBe(200);
    expect(await logSeqs(channel)).toEqual(range(21, 25));
    // 100 more: the next trim keeps the last 50.
    expect((await ingest(range(26, 125).map(() => event(channel)))).status).toBe(200);
    expect(await logSeqs(channel)).toEqual(range(76, 125));
  });

  it("keeps an id while it is among the last 10,000 or younger than 10 minutes, reading only about the rows it drops", async () => {
    const channel = "trim-seen";
    expect((await ingest([event(channel)])).status).toBe(200);
    const result = await runInDurableObject(stubOf(channel), (_, state) => {
      const sql = state.storage.sql;
      const now = Date.now();
      // A busy channel's last minutes: ids 2..30,001 after the one published, all of them young.
      sql.exec(
        `with recursive g(n) as (select 2 union all select n + 1 from g where n < 30001)
         insert into seen (id, seq, at) select 'bulk-' || n, n, ? from g`,
        now,
      );
      // The channel's log, alone, on a connection that counts the rows each statement reads.
      let rowsRead = 0;
      const counting = {
        exec: (query: string, ...bindings: unknown[]) => {
          const cursor = sql.exec(query, ...bindings);
          const rows = cursor.toArray();
          rowsRead += cursor.rowsRead;
          return { toArray: () => rows, one: () => rows[0], [Symbol.iterator]: () => rows[Symbol.iterator]() };
        },
      } as unknown as SqlStorage;
      const config = resolveWorkerConfig(env);
      const log = new EventLog(counting, { maxEvents: config.replayMaxEvents, maxAgeMs: config.replayMaxAgeMs });
      // Runs one trim at seq 30,001, counting the rows its statements read.
      const trim = () => {
        rowsRead = 0;
        log.trim(30_001, now, 30_001);
        const left = sql.exec<{ low: number; n: number }>("select min(seq) as low, count(*) as n from seen").one();
        return { rowsRead, ...left };
      };
      const young = trim();
      // Now the first 15,001 are older than 10 minutes.
      sql.exec("update seen set at = ? where seq <= 15001", now - 11 * 60_000);
      const aged = trim();
      return { young, aged };
    });
    // All young: nothing goes, and the trim reads a handful of rows (a scan of the 20,001 ids
    // past the count bound would read every one of them, on every trim).
    expect(result.young).toMatchObject({ low: 1, n: 30_001 });
    expect(result.young.rowsRead).toBeLessThan(100);
    // Old and not among the last 10,000: ids up to 15,001 go, about three rows read for each.
    expect(result.aged).toMatchObject({ low: 15_002, n: 15_000 });
    expect(result.aged.rowsRead).toBeLessThan(4 * 15_001);
  });
});
