/**
 * The transports besides the WebSocket, inside workerd: a channel's frames as Server-Sent Events
 * (same query, same frames, resume from Last-Event-ID) and HTTP catch-up (the events after `since`
 * as JSON, paged, answering like `reset` when it cannot).
 */
import { exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { catchUp, change, EventStreamReader, event, ingest, requestStream, Socket, tokenFor } from "./helpers.ts";

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const publish = (channel: string, from: number, to: number) => ingest(range(from, to).map((n) => event(channel, { n })));
const ns = (events: { data: unknown }[]) => events.map((e) => (e.data as { n: number }).n);

describe("event streams (Server-Sent Events)", () => {
  it("carries the frames a WebSocket gets, byte for byte, each live batch with id: its last seq", async () => {
    const channel = "sse-frames";
    await publish(channel, 1, 3);
    const [stream, socket] = await Promise.all([EventStreamReader.open(channel), Socket.open(channel)]);
    await stream.until(() => stream.messages.length >= 1);
    // A fresh stream's welcome is where it starts: its id is the channel's seq.
    expect(stream.frames[0]).toMatchObject({ type: "welcome", channel, seq: 3 });
    expect(stream.messages[0]!.id).toBe("3");
    // Data whose JSON text holds line breaks between tokens: SSE carries it on several data lines.
    await ingest([event(channel, { n: 4 }), { ...event(channel), data: '{"n":\n5,\r\n"big":12345678901234567890123}' }]);
    await Promise.all([stream.eventCount(2), socket.eventCount(2)]);
    expect(stream.messages.at(-1)!.id).toBe("5");
    expect(stream.messages.at(-1)!.data.replace(/\n/g, "")).toBe(socket.raw.at(-1)!.replace(/\r?\n/g, ""));
    expect(stream.messages.at(-1)!.data).toContain('"big":12345678901234567890123');
    await stream.close();
    socket.ws.close();
  });

  it("resumes from Last-Event-ID with exactly the events it missed, and Last-Event-ID wins over the URL's since", async () => {
    const channel = "sse-resume";
    const first = await EventStreamReader.open(channel);
    await first.until(() => first.messages.length >= 1);
    await publish(channel, 1, 4);
    await first.eventCount(4);
    const lastEventId = first.lastEventId!;
    expect(lastEventId).toBe("4");
    await first.close();
    await publish(channel, 5, 9);
    // As a browser's EventSource reconnects: the first URL (here with a stale since) and Last-Event-ID.
    const again = await EventStreamReader.open(channel, "since=1", { lastEventId });
    const missed = await again.eventCount(5);
    expect(ns(missed)).toEqual([5, 6, 7, 8, 9]);
    expect(again.frames[0]).toMatchObject({ type: "welcome", seq: 9 });
    // The join's last message carries the seq it brings the client to.
    expect(again.lastEventId).toBe("9");
    await publish(channel, 10, 10);
    expect(ns(await again.eventCount(6))).toEqual([5, 6, 7, 8, 9, 10]);
    await again.close();
  });

  it("applies the filter, sends the snapshot of a retaining channel, and resets a client whose events the log no longer has", async () => {
    const channel = "sse-state";
    await ingest([change(channel, "INSERT", { id: 1, v: "a" }), change(channel, "INSERT", { id: 2, v: "b" })]);
    const filtered = await EventStreamReader.open(channel, `filter=${encodeURIComponent(JSON.stringify({ id: { eq: 2 } }))}`);
    const snapshot = await filtered.until(() => filtered.frames.find((f) => f.type === "snapshot"));
    expect(snapshot).toMatchObject({ seq: 2, rows: [{ key: { id: 2 }, row: { id: 2, v: "b" } }] });
    expect(filtered.lastEventId).toBe("2");
    await ingest([change(channel, "UPDATE", { id: 1, v: "a2" }), change(channel, "UPDATE", { id: 2, v: "b2" })]);
    const [only] = await filtered.eventCount(1);
    expect(only).toMatchObject({ seq: 4, data: { new: { id: 2, v: "b2" } } });
    expect(filtered.lastEventId).toBe("4");
    await filtered.close();
    // 60 more events: older than REPLAY_MAX_EVENTS (50 here) keeps.
    await ingest(range(1, 60).map((n) => change(channel, "INSERT", { id: 100 + n, v: "x" })));
    const late = await EventStreamReader.open(channel, "", { lastEventId: "4" });
    await late.until(() => late.frames.some((f) => f.type === "snapshot"));
    expect(late.frames.slice(0, 2)).toMatchObject([{ type: "welcome" }, { type: "reset", reason: "gap", seq: 64 }]);
    await late.close();
  });

  it("refuses with an HTTP status and a JSON error: no token, bad since, a full channel (streams and sockets count together)", async () => {
    const noToken = await requestStream("sse-private", "", { token: null });
    expect(noToken.status).toBe(401);
    expect(await noToken.json()).toMatchObject({ error: { code: "token_required" } });
    const badSince = await requestStream("sse-private", "since=abc");
    expect(badSince.status).toBe(400);
    expect(await badSince.json()).toMatchObject({ error: { code: "invalid_query" } });
    // MAX_SOCKETS_PER_CHANNEL is 20 here: ten sockets and ten streams fill the channel.
    const channel = "sse-full";
    const sockets = await Promise.all(range(1, 10).map(() => Socket.open(channel)));
    const streams = await Promise.all(range(1, 10).map(() => EventStreamReader.open(channel)));
    const refused = await requestStream(channel);
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { code: "channel_full" } });
    for (const s of sockets) s.ws.close();
    await Promise.all(streams.map((s) => s.close()));
  });

  it("serves a sharded channel's stream from its root, with the events every shard's sockets get", async () => {
    const channel = "live:sse";
    const [stream, socket] = await Promise.all([EventStreamReader.open(channel), Socket.open(channel)]);
    await socket.frameCount(1);
    expect(socket.frames[0]).toMatchObject({ type: "welcome", shard: expect.any(Number) });
    await stream.until(() => stream.messages.length >= 1);
    await publish(channel, 1, 3);
    expect(ns(await stream.eventCount(3))).toEqual([1, 2, 3]);
    expect(ns(await socket.eventCount(3))).toEqual([1, 2, 3]);
    await stream.close();
    socket.ws.close();
  });
});

describe("HTTP catch-up", () => {
  it("pages through the events after since, exact, and says where to go on from", async () => {
    const channel = "cu-pages";
    const start = await catchUp(channel);
    expect(start).toMatchObject({ status: 200, body: { channel, seq: 0, events: [], next: 0, more: false } });
    const { epoch } = start.body;
    await publish(channel, 1, 7);
    await ingest([{ ...event(channel), data: '{"n":8,"big":12345678901234567890123}' }]);
    const seen: number[] = [];
    let since = 2;
    let pages = 0;
    for (;;) {
      const page = await catchUp(channel, `since=${since}&epoch=${epoch}&limit=2`);
      expect(page.status).toBe(200);
      pages++;
      seen.push(...page.body.events.map((e: { seq: number }) => e.seq));
      since = page.body.next;
      if (!page.body.more) break;
    }
    expect(seen).toEqual([3, 4, 5, 6, 7, 8]);
    expect(pages).toBe(3);
    // The answer is the event data's text as written: digits past a double's included.
    const res = await exports.default.fetch(`http://edge/channels/${channel}/events?since=7&epoch=${epoch}`, {
      headers: { Authorization: `Bearer ${await tokenFor([channel])}` },
    });
    const last = await res.text();
    expect(last).toContain('"big":12345678901234567890123');
  });

  it("applies the filter, and moves past the events it skipped", async () => {
    const channel = "cu-filter";
    const { epoch } = (await catchUp(channel)).body;
    await ingest(range(1, 10).map((n) => event(channel, { n, even: n % 2 === 0 })));
    const filter = encodeURIComponent(JSON.stringify({ even: { eq: true } }));
    const first = await catchUp(channel, `since=0&epoch=${epoch}&limit=2&filter=${filter}`);
    expect(ns(first.body.events)).toEqual([2, 4]);
    expect(first.body).toMatchObject({ next: 4, more: true });
    const rest = await catchUp(channel, `since=4&epoch=${epoch}&filter=${filter}`);
    expect(ns(rest.body.events)).toEqual([6, 8, 10]);
    expect(rest.body).toMatchObject({ next: 10, more: false });
  });

  it("answers like reset does: another epoch, a gap older than the log, with the retained rows", async () => {
    const channel = "cu-reset";
    await ingest([change(channel, "INSERT", { id: 1, v: "kept" })]);
    const other = await catchUp(channel, "since=1&epoch=not-this-one");
    expect(other.body).toMatchObject({
      reset: { reason: "epoch" },
      events: [],
      next: 1,
      snapshot: { type: "snapshot", seq: 1, rows: [{ row: { id: 1, v: "kept" } }] },
    });
    const { epoch } = other.body;
    await ingest(range(1, 60).map((n) => change(channel, "UPDATE", { id: 1, v: `v${n}` })));
    const gap = await catchUp(channel, `since=1&epoch=${epoch}`);
    expect(gap.body).toMatchObject({ reset: { reason: "gap" }, seq: 61, next: 61, snapshot: { rows: [{ row: { id: 1, v: "v60" } }] } });
  });

  it("refuses with a status and a JSON error: no token, bad since, bad limit, bad filter", async () => {
    expect(await catchUp("cu-private", "", { token: null })).toMatchObject({ status: 401, body: { error: { code: "token_required" } } });
    expect(await catchUp("cu-private", "since=-1")).toMatchObject({ status: 400, body: { error: { code: "invalid_query" } } });
    expect(await catchUp("cu-private", "since=1&limit=5000")).toMatchObject({ status: 400, body: { error: { code: "invalid_query" } } });
    expect(await catchUp("cu-private", `since=1&filter=${encodeURIComponent("{")}`)).toMatchObject({
      status: 400,
      body: { error: { code: "invalid_filter" } },
    });
  });
});
