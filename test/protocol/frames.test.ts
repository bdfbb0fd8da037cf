/**
 * protocol/frames.ts: every frame and ingest body, built as text and read back. The builders splice
 * event data in as the JSON text it is; for any value their output is exactly what JSON.stringify
 * makes of the same frame as an object, so a frame built fast is the frame the types describe.
 * Client frames and ingest bodies round-trip through their parsers.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  broadcastFrame,
  CHANNEL_PATTERN,
  type ClientFrame,
  clientFrameJson,
  EVENT_NAME_PATTERN,
  eventJson,
  eventsFrame,
  frameJson,
  type IngestEvent,
  ingestBody,
  MAX_PRESENCE_STATE_BYTES,
  PONG,
  parseClientFrame,
  parseIngestBody,
  parseServerFrame,
  snapshotFrame,
  snapshotRowJson,
} from "../../protocol/index.ts";

const value = fc.jsonValue({ maxDepth: 4 });
const seq = fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER });
const ts = fc.integer({ min: 0, max: 4_102_444_800_000 });
const channel = fc.stringMatching(CHANNEL_PATTERN);
const eventName = fc.stringMatching(EVENT_NAME_PATTERN);
const id = fc.string({ minLength: 1, maxLength: 128 });
const key = fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.integer(), fc.string()), { minKeys: 1, maxKeys: 3 });

describe("server frames built as text", () => {
  it("an events frame is JSON.stringify of the same frame, whatever the data", () => {
    fc.assert(
      fc.property(fc.array(fc.record({ seq, id, event: eventName, data: value, ts }), { maxLength: 5 }), (events) => {
        const built = eventsFrame(events.map((e) => eventJson(e.seq, e.id, e.event, JSON.stringify(e.data), e.ts)));
        expect(built).toBe(JSON.stringify({ type: "events", events }));
        expect(parseServerFrame(built, "number")).toEqual(JSON.parse(built));
      }),
    );
  });

  it("a snapshot frame is JSON.stringify of the same frame; a row too large is null and flagged, an overflow flagged", () => {
    const row = fc.record({ schema: fc.string(), table: fc.string(), key, row: fc.option(fc.dictionary(fc.string(), value, { maxKeys: 3 })), seq });
    fc.assert(
      fc.property(seq, fc.array(row, { maxLength: 4 }), fc.boolean(), (at, rows, overflow) => {
        const built = snapshotFrame(
          at,
          rows.map((r) => snapshotRowJson(r.schema, r.table, JSON.stringify(r.key), r.row === null ? null : JSON.stringify(r.row), r.seq)),
          overflow,
        );
        const expected = {
          type: "snapshot",
          seq: at,
          rows: rows.map((r) => ({ ...r, ...(r.row === null ? { oversized: true } : {}) })),
          ...(overflow ? { overflow: true } : {}),
        };
        expect(built).toBe(JSON.stringify(expected));
      }),
    );
  });

  it("a broadcast carries the client's data text as written, digits included", () => {
    fc.assert(
      fc.property(eventName, value, fc.uuid(), fc.option(fc.string()), (event, data, member, user) => {
        const from = { id: member, user };
        expect(broadcastFrame(event, JSON.stringify(data), from)).toBe(JSON.stringify({ type: "broadcast", event, data, from }));
      }),
    );
    const big = broadcastFrame("tick", '{"n":12345678901234567890123}', { id: "m", user: null });
    expect(big).toContain('"data":{"n":12345678901234567890123}');
    expect(parseServerFrame(big, "string")).toMatchObject({ data: { n: "12345678901234567890123" } });
  });

  it("reads every other frame as frameJson wrote it, and the heartbeat's pong as no frame", () => {
    const frames: Parameters<typeof frameJson>[0][] = [
      { type: "welcome", channel: "todos", epoch: "e", seq: 3, member: "m", shard: 1 },
      { type: "reset", reason: "gap", epoch: "e", seq: 9 },
      { type: "presence", members: [{ id: "a", user: null, state: { typing: true } }] },
      { type: "presence_diff", joins: [], leaves: [{ id: "a", user: "u", state: null }] },
      { type: "error", code: "rate_limited", message: "slow down" },
    ];
    for (const frame of frames) expect(parseServerFrame(frameJson(frame))).toEqual(frame);
    expect(parseServerFrame(PONG)).toBeNull();
    expect(() => parseServerFrame("{not json")).toThrow(SyntaxError);
  });
});

describe("client frames", () => {
  const clientFrame: fc.Arbitrary<ClientFrame> = fc.oneof(
    fc.record({
      type: fc.constant("presence" as const),
      state: fc.oneof(fc.constant(null), fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 20 }), { maxKeys: 4 })),
    }),
    fc.record({ type: fc.constant("broadcast" as const), event: eventName, data: value }),
  );

  it("round-trip: what a client sends is what the channel reads, a broadcast's data as its exact text", () => {
    fc.assert(
      fc.property(clientFrame, (frame) => {
        const text = clientFrameJson(frame);
        const read = parseClientFrame(text);
        expect(read.ok).toBe(true);
        if (!read.ok) return;
        if (frame.type === "presence") expect(read.frame).toEqual({ type: "presence", state: frame.state, stateJson: JSON.stringify(frame.state) });
        else expect(read.frame).toEqual({ type: "broadcast", event: frame.event, data: JSON.stringify(frame.data) });
      }),
    );
  });

  it("keeps a broadcast's data as the client wrote it, spacing and digits included", () => {
    const read = parseClientFrame('{"type":"broadcast","event":"e","data": [1.50, 12345678901234567890]}');
    expect(read).toEqual({ ok: true, frame: { type: "broadcast", event: "e", data: "[1.50, 12345678901234567890]" } });
  });

  it("refuses what is not a frame with the code and, when it had one, the frame's type", () => {
    expect(parseClientFrame("hello")).toMatchObject({ ok: false, code: "unsupported_frame", type: null });
    expect(parseClientFrame("42")).toMatchObject({ ok: false, code: "unsupported_frame", type: null });
    expect(parseClientFrame('{"type":"subscribe"}')).toMatchObject({
      ok: false,
      code: "unsupported_frame",
      type: null,
      message: expect.stringContaining('"subscribe"'),
    });
    expect(parseClientFrame('{"type":"broadcast","event":"has space"}')).toMatchObject({ ok: false, code: "invalid_frame", type: "broadcast" });
    const large = JSON.stringify({ type: "presence", state: "x".repeat(MAX_PRESENCE_STATE_BYTES) });
    expect(parseClientFrame(large)).toMatchObject({ ok: false, code: "invalid_frame", type: "presence" });
    // Exactly at the limit is allowed (1024 bytes of JSON: the quotes count).
    expect(parseClientFrame(JSON.stringify({ type: "presence", state: "x".repeat(MAX_PRESENCE_STATE_BYTES - 2) })).ok).toBe(true);
  });
});

describe("ingest bodies", () => {
  const ingestEvent: fc.Arbitrary<IngestEvent> = fc
    .record({ id, channel, event: eventName, data: value, ts, retain: fc.boolean(), reset: fc.boolean() })
    .map(({ data, retain, reset, ...e }) => ({ ...e, data: JSON.stringify(data), ...(retain ? { retain: true } : {}), ...(reset ? { reset: true } : {}) }));

  it("round-trip: the Worker reads back every event the relay wrote, its data text unchanged", () => {
    fc.assert(
      fc.property(fc.array(ingestEvent, { minLength: 1, maxLength: 8 }), (events) => {
        const body = ingestBody(events);
        expect(JSON.parse(body)).toEqual({ events: events.map((e) => ({ ...e, data: JSON.parse(e.data) })) });
        const parsed = parseIngestBody(body);
        expect(parsed).toEqual({ ok: true, value: { events } });
      }),
    );
  });
});
