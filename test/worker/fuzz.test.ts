/**
 * No input crashes the Worker or a channel, and nothing secret leaks: property-based fuzzing
 * (fast-check) of the ingest parser and of inbound WebSocket frames, with every response body,
 * frame and log line checked for secrets, tokens and stack traces.
 */
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { afterAll, beforeAll, expect, it, vi } from "vitest";
import { ingestBody, type ServerFrame } from "../../protocol/index.ts";
import { event, ingest, postIngest, Socket, tokenFor, upgrade } from "./helpers.ts";

const seen: string[] = []; // every response body, frame and log line of this file
const tokens: string[] = [];

beforeAll(() => {
  for (const method of ["log", "warn", "error", "info", "debug"] as const) {
    const original = console[method];
    vi.spyOn(console, method).mockImplementation((...args: unknown[]) => {
      seen.push(args.map(String).join(" "));
      original(...args);
    });
  }
});

afterAll(() => {
  vi.restoreAllMocks();
  // The point of the file: nothing it saw carries a secret, a token or a stack trace.
  const secrets = [env.INGEST_SECRET!, env.INGEST_SECRET_PREVIOUS!, env.JWT_SECRET!, ...tokens];
  for (const text of seen) {
    for (const secret of secrets) expect(text).not.toContain(secret);
    expect(text).not.toMatch(/\n\s+at .+:\d+:\d+/);
  }
  expect(seen.length).toBeGreaterThan(100);
});

const FRAME_TYPES = new Set(["welcome", "events", "reset", "error"]);

/** Bodies near the protocol's shape, with every field free to be any JSON. */
const nearlyValid = fc.record(
  {
    events: fc.array(
      fc.record(
        {
          id: fc.oneof(fc.string({ maxLength: 200 }), fc.jsonValue()),
          channel: fc.oneof(fc.stringMatching(/^[A-Za-z0-9_.:@-]{1,20}$/), fc.string(), fc.jsonValue()),
          event: fc.oneof(fc.constantFrom("insert", "n", "x.y"), fc.string(), fc.jsonValue()),
          data: fc.jsonValue(),
          ts: fc.oneof(fc.nat(), fc.double(), fc.string(), fc.jsonValue()),
          extra: fc.jsonValue(),
        },
        { requiredKeys: [] },
      ),
      { maxLength: 5 },
    ),
    more: fc.jsonValue(),
  },
  { requiredKeys: [] },
);

/** Bodies the Worker must accept: any data, names from the allowed alphabets, ids that may repeat. */
const valid = fc.record({
  events: fc.array(
    fc.record({
      id: fc.constantFrom("a", "b", "c").chain((p) => fc.nat(20).map((n) => `${p}${n}`)),
      channel: fc.stringMatching(/^[A-Za-z0-9_.:@-]{1,12}$/),
      event: fc.stringMatching(/^[A-Za-z0-9_.:-]{1,12}$/),
      data: fc.jsonValue(),
      ts: fc.nat(),
    }),
    { minLength: 1, maxLength: 5 },
  ),
});

/** 300 and 60 generated runs take 2-4 s on an idle 2-core machine; a loaded one needs more. */
const FUZZ_TIMEOUT_MS = 30_000;

it(
  "answers every signed ingest body with 200 or a 4xx JSON error, and stores exactly what it accepts",
  async () => {
    const statuses = new Set<number>();
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          valid.map((b) => JSON.stringify(b)),
          nearlyValid.map((b) => JSON.stringify(b)),
          fc.jsonValue().map((v) => JSON.stringify(v)),
          fc.string(),
        ),
        async (body) => {
          const res = await postIngest(body);
          statuses.add(res.status);
          const text = await res.text();
          seen.push(text);
          expect([200, 400, 413]).toContain(res.status);
          const answer = JSON.parse(text);
          if (res.status === 200) {
            const sent = (JSON.parse(body) as { events: unknown[] }).events.length;
            expect(answer.accepted + answer.duplicates).toBe(sent);
          } else {
            expect(typeof answer.error.code).toBe("string");
            expect(typeof answer.error.message).toBe("string");
          }
        },
      ),
      { numRuns: 300 },
    );
    expect([...statuses].sort()).toEqual([200, 400]);
  },
  FUZZ_TIMEOUT_MS,
);

it(
  "survives any inbound frame (text or binary, any size): only protocol frames come back, and the channel keeps working",
  async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.string({ maxLength: 100 }), fc.string({ unit: "grapheme", maxLength: 3000 }), fc.uint8Array({ maxLength: 6000 })), {
          minLength: 1,
          maxLength: 4,
        }),
        async (messages) => {
          const sock = await Socket.open("fuzz-frames");
          await sock.frameCount(1);
          for (const m of messages) sock.ws.send(m);
          // Each message is answered (an error frame) or ends the socket (a limit).
          await sock.until(() => sock.closed || sock.frames.length >= 1 + messages.length);
          for (const raw of sock.raw) {
            seen.push(raw);
            const frame = JSON.parse(raw) as ServerFrame;
            expect(FRAME_TYPES.has(frame.type)).toBe(true);
          }
          sock.ws.close();
        },
      ),
      { numRuns: 60 },
    );
    const after = await Socket.open("fuzz-frames");
    await after.frameCount(1);
    await ingest([event("fuzz-frames", "alive")]);
    expect((await after.eventCount(1))[0]!.data).toBe("alive");
  },
  FUZZ_TIMEOUT_MS,
);

it("never echoes a token or secret in refusals", async () => {
  const token = await tokenFor(["somewhere-else"]);
  tokens.push(token);
  for (const res of [
    await upgrade("private-leak", "", { token }),
    await upgrade("private-leak", "", { token: `${token}x` }),
    await upgrade("private-leak", "", { token: `${token.split(".").slice(0, 2).join(".")}.AAAA` }),
  ]) {
    seen.push(await res.text());
    expect(res.status).toBeGreaterThanOrEqual(400);
  }
  const body = ingestBody([event("leak")]);
  const res = await postIngest(body, { secret: "wrong-secret-wrong-secret-0123" });
  seen.push(await res.text());
  expect(res.status).toBe(401);
});
