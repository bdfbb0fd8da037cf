/** POST /ingest inside workerd: signatures, validation, routing, dedupe, sequencing. */

import { runInDurableObject } from "cloudflare:test";
import { env, exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { ingestBody, SIGNATURE_HEADER, signBody } from "../../protocol/index.ts";
import { event, ingest, postIngest, Socket, wire } from "./helpers.ts";

/** The channel's stored seq, read inside its Durable Object. */
async function storedSeq(channel: string): Promise<number> {
  const stub = env.CHANNEL.get(env.CHANNEL.idFromName(channel));
  return runInDurableObject(stub, (_, state) =>
    Number(state.storage.sql.exec<{ value: string }>("select value from meta where key = 'seq'").toArray()[0]?.value ?? 0),
  );
}

describe("signature", () => {
  it("accepts a batch signed with the current secret", async () => {
    const res = await ingest([event("sig-ok")]);
    expect(res).toEqual({ status: 200, body: { accepted: 1, duplicates: 0 } });
  });

  it.each([
    ["missing", { signature: null }, "signature_missing"],
    ["malformed", { signature: "v1=abc" }, "signature_malformed"],
    ["wrong secret", { secret: "not-the-secret-at-all" }, "signature_mismatch"],
    ["expired (6 minutes old)", { t: Math.floor(Date.now() / 1000) - 360 }, "signature_expired"],
    ["from the future (6 minutes ahead)", { t: Math.floor(Date.now() / 1000) + 360 }, "signature_expired"],
  ])("refuses a %s signature with 401 and changes nothing", async (_, opts, code) => {
    const body = ingestBody([event("sig-bad")]);
    const res = await postIngest(body, opts);
    expect(res.status).toBe(401);
    expect(await res.json()).toMatchObject({ error: { code } });
    expect(await storedSeq("sig-bad")).toBe(0);
  });

  it("refuses a body changed after signing", async () => {
    const body = ingestBody([event("sig-tamper", { amount: 1 })]);
    const signature = await signBody(env.INGEST_SECRET!, body);
    const res = await exports.default.fetch("http://edge/ingest", {
      method: "POST",
      headers: { [SIGNATURE_HEADER]: signature },
      body: body.replace('"amount":1', '"amount":9'),
    });
    expect(res.status).toBe(401);
    expect(await storedSeq("sig-tamper")).toBe(0);
  });
});

describe("body validation", () => {
  const valid = () => wire(event("valid-ch"));
  it.each([
    ["malformed JSON", "{nope", 400, "malformed_json"],
    ["a non-object body", "[]", 400, "invalid_body"],
    ["an unknown top-level field", JSON.stringify({ events: [valid()], extra: 1 }), 400, "invalid_body"],
    ["events not an array", JSON.stringify({ events: {} }), 400, "invalid_body"],
    ["no events", JSON.stringify({ events: [] }), 400, "invalid_body"],
    ["an unknown event field", JSON.stringify({ events: [{ ...valid(), extra: true }] }), 400, "invalid_body"],
    ["a numeric id", JSON.stringify({ events: [{ ...valid(), id: 5 }] }), 400, "invalid_body"],
    ["a string ts", JSON.stringify({ events: [{ ...valid(), ts: "now" }] }), 400, "invalid_body"],
    ["missing data", JSON.stringify({ events: [{ id: "x", channel: "c", event: "e", ts: 1 }] }), 400, "invalid_body"],
    ["an invalid channel name", JSON.stringify({ events: [{ ...valid(), channel: "has space" }] }), 400, "invalid_channel"],
    ["a channel name too long", JSON.stringify({ events: [{ ...valid(), channel: "c".repeat(129) }] }), 400, "invalid_channel"],
    ["an invalid event name", JSON.stringify({ events: [{ ...valid(), event: "a/b" }] }), 400, "invalid_body"],
    ["more than 1000 events", JSON.stringify({ events: Array.from({ length: 1001 }, () => valid()) }), 413, "payload_too_large"],
  ])("refuses %s with a 4xx and a JSON error naming the problem", async (_, body, status, code) => {
    const res = await postIngest(body);
    expect(res.status).toBe(status);
    const answer = (await res.json()) as { error: { code: string; message: string } };
    expect(answer.error.code).toBe(code);
    expect(answer.error.message.length).toBeGreaterThan(5);
    expect(await storedSeq("valid-ch")).toBe(0);
  });

  it("names the offending event's index", async () => {
    const res = await postIngest(JSON.stringify({ events: [valid(), { ...valid(), channel: "" }] }));
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/^events\[1\]: channel/);
  });

  it.each([
    ["with its length declared", false],
    ["streamed (no length)", true],
  ])("refuses a body over MAX_INGEST_BYTES with 413 before reading it all: %s", async (_, streamed) => {
    const body = ingestBody([event("big-body", "x".repeat(9 * 1024 * 1024))]);
    const res = await postIngest(body, { signature: `t=1,v1=${"0".repeat(64)}`, streamed });
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ error: { code: "payload_too_large" } });
  });

  it.each([
    ["with its length declared, as the relay sends it", false],
    ["streamed (no length), in chunks that split characters", true],
  ])("reads a body %s byte for byte", async (label, streamed) => {
    const channel = `read-${streamed ? "streamed" : "declared"}`;
    const data = { text: "é ü 漢字 🙂 \u2028", pad: "y".repeat(70_000) };
    const socket = await Socket.open(channel);
    const res = await postIngest(ingestBody([event(channel, data)]), { streamed });
    expect(res.status, label).toBe(200);
    expect((await socket.eventCount(1))[0]!.data).toEqual(data);
  });

  it("answers unknown routes with a JSON 404", async () => {
    const res = await exports.default.fetch("http://edge/nope");
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ error: { code: "not_found" } });
  });
});

describe("routing and sequencing", () => {
  it("routes each event to its channel only, in the order sent", async () => {
    const [a, b] = await Promise.all([Socket.open("route-a"), Socket.open("route-b")]);
    const batch = [event("route-a", 1), event("route-b", 2), event("route-a", 3), event("route-b", 4)];
    expect((await ingest(batch)).body).toEqual({ accepted: 4, duplicates: 0 });
    expect((await a.eventCount(2)).map((e) => e.data)).toEqual([1, 3]);
    expect((await b.eventCount(2)).map((e) => e.data)).toEqual([2, 4]);
    // One frame per publish per socket: both of a's events came in one frame.
    expect(a.frames.filter((f) => f.type === "events")).toHaveLength(1);
  });

  it("drops duplicate ids, within a batch and across batches, and says so", async () => {
    const sock = await Socket.open("dupes");
    const e1 = event("dupes");
    const e2 = event("dupes");
    expect((await ingest([e1, e2, e1])).body).toEqual({ accepted: 2, duplicates: 1 });
    expect((await ingest([e1, e2])).body).toEqual({ accepted: 0, duplicates: 2 });
    const e3 = event("dupes");
    expect((await ingest([e2, e3])).body).toEqual({ accepted: 1, duplicates: 1 });
    const events = await sock.eventCount(3);
    expect(events.map((e) => e.id)).toEqual([e1.id, e2.id, e3.id]);
    expect(await storedSeq("dupes")).toBe(3);
  });

  it("assigns seq 1, 2, 3, ... across batches without gaps", async () => {
    const live = await Socket.open("seq");
    const [welcome] = await live.frameCount(1);
    for (let i = 0; i < 5; i++) await ingest([event("seq"), event("seq")]);
    expect((await live.eventCount(10)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // The log agrees: a client resuming from 0 is replayed the same seqs.
    const resumed = await Socket.open("seq", `?since=0&epoch=${(welcome as { epoch: string }).epoch}`);
    expect((await resumed.eventCount(10)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(await storedSeq("seq")).toBe(10);
  });

  it("sends welcome {channel, epoch, seq} first, then events", async () => {
    await ingest([event("welcome"), event("welcome")]);
    const sock = await Socket.open("welcome");
    await ingest([event("welcome", "live")]);
    const frames = await sock.frameCount(2);
    expect(frames[0]).toMatchObject({ type: "welcome", channel: "welcome", seq: 2 });
    expect((frames[0] as { epoch: string }).epoch).toMatch(/^[0-9a-f-]{36}$/);
    expect(frames[1]).toMatchObject({ type: "events", events: [{ seq: 3, event: "test", data: "live" }] });
  });
});
