/**
 * Validation of ingest bodies. The Worker runs it on every request; messages name the exact
 * field so a relay author (or an attacker's fuzzer) learns what was wrong and nothing else.
 */
import type { ErrorCode, IngestBody, IngestEvent } from "./wire.ts";
import { CHANNEL_PATTERN, EVENT_NAME_PATTERN, MAX_EVENT_ID_LENGTH, MAX_INGEST_EVENTS } from "./wire.ts";

/** Result of {@link parseIngestBody}. */
export type ParseResult<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string };

const EVENT_KEYS = new Set(["id", "channel", "event", "data", "ts", "retain"]);

function fail(code: ErrorCode, message: string): ParseResult<never> {
  return { ok: false, code, message };
}

/** Quotes a client-supplied value for an error message without echoing a large input. */
function show(value: unknown): string {
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** True when `name` is a valid channel name (see CHANNEL_PATTERN). */
export function isValidChannel(name: unknown): name is string {
  return typeof name === "string" && CHANNEL_PATTERN.test(name);
}

/** Parses and validates the raw body of `POST /ingest`. */
export function parseIngestBody(raw: string, maxEvents = MAX_INGEST_EVENTS): ParseResult<IngestBody> {
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    return fail("malformed_json", "body is not valid JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return fail("invalid_body", 'body must be a JSON object {"events":[...]}');
  }
  for (const key of Object.keys(body)) {
    if (key !== "events") return fail("invalid_body", `unknown field ${show(key)} in body; only "events" is allowed`);
  }
  const events = (body as { events?: unknown }).events;
  if (!Array.isArray(events)) return fail("invalid_body", "events must be an array");
  if (events.length === 0) return fail("invalid_body", "events must not be empty");
  if (events.length > maxEvents) {
    return fail("payload_too_large", `events has ${events.length} items; at most ${maxEvents} are allowed per request`);
  }
  for (let i = 0; i < events.length; i++) {
    const problem = eventProblem(events[i]);
    if (problem) return fail(problem.code, `events[${i}]: ${problem.message}`);
  }
  return { ok: true, value: { events: events as IngestEvent[] } };
}

function eventProblem(e: unknown): { code: ErrorCode; message: string } | null {
  if (typeof e !== "object" || e === null || Array.isArray(e)) return { code: "invalid_body", message: "must be an object" };
  for (const key of Object.keys(e)) {
    if (!EVENT_KEYS.has(key)) return { code: "invalid_body", message: `unknown field ${show(key)}` };
  }
  const { id, channel, event, ts } = e as Record<string, unknown>;
  if (typeof id !== "string" || id.length === 0 || id.length > MAX_EVENT_ID_LENGTH) {
    return { code: "invalid_body", message: `id must be a non-empty string of at most ${MAX_EVENT_ID_LENGTH} characters` };
  }
  if (!isValidChannel(channel)) {
    return {
      code: "invalid_channel",
      message: `channel ${show(channel)} is not a valid channel name (1-128 of A-Z a-z 0-9 _ . : @ -)`,
    };
  }
  if (typeof event !== "string" || !EVENT_NAME_PATTERN.test(event)) {
    return { code: "invalid_body", message: `event ${show(event)} is not a valid event name (1-64 of A-Z a-z 0-9 _ . : -)` };
  }
  if (!("data" in e)) return { code: "invalid_body", message: "data is missing (use null for no data)" };
  if (typeof ts !== "number" || !Number.isSafeInteger(ts) || ts < 0) {
    return { code: "invalid_body", message: "ts must be a non-negative integer (milliseconds since the Unix epoch)" };
  }
  const { retain } = e as Record<string, unknown>;
  if (retain !== undefined && typeof retain !== "boolean") return { code: "invalid_body", message: "retain must be a boolean" };
  return null;
}
