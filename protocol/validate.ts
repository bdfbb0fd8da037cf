/**
 * Validation of ingest bodies. The Worker runs it on every request; messages name the exact
 * field so a relay author (or an attacker's fuzzer) learns what was wrong and nothing else.
 */
import { decodeString, scanString, scanValue } from "./json.ts";
import type { ErrorCode, IngestBody, IngestEvent } from "./wire.ts";
import { CHANNEL_PATTERN, EVENT_NAME_PATTERN, MAX_EVENT_ID_LENGTH, MAX_INGEST_EVENTS } from "./wire.ts";

/** Result of {@link parseIngestBody}. */
export type ParseResult<T> = { ok: true; value: T } | { ok: false; code: ErrorCode; message: string };

const EVENT_KEYS = new Set(["id", "channel", "event", "data", "ts", "retain", "reset"]);

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

/**
 * Parses and validates the raw body of `POST /ingest`. Each event's `data` comes back as the exact
 * JSON text the body carries (never parsed into JS values: see protocol/json.ts), so a bigint past
 * 2^53, a 40-digit numeric or a value nested thousands deep reaches subscribers as written.
 */
export function parseIngestBody(raw: string, maxEvents = MAX_INGEST_EVENTS): ParseResult<IngestBody> {
  const fast = readIngestBody(raw, maxEvents);
  if (fast) return { ok: true, value: { events: fast } };
  // The body is not a valid batch: find out exactly what is wrong, for the error message.
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
  // Valid as JSON.parse reads it but not as the text reader does: cannot happen for a body that
  // is JSON; said plainly should it ever.
  return fail("invalid_body", "body could not be read as a batch of events");
}

/**
 * The events of a valid body, read in one pass over its text (data kept as text); null when the
 * body is anything but a valid batch, and parseIngestBody then finds the reason. A member given
 * twice keeps its last value, as JSON.parse does.
 */
function readIngestBody(raw: string, maxEvents: number): IngestEvent[] | null {
  const r = new TextReader(raw);
  if (!r.take(0x7b /* { */)) return null;
  let events: IngestEvent[] | null = null;
  if (!r.take(0x7d /* } */)) {
    do {
      if (r.name() !== "events" || !r.take(0x5b /* [ */)) return null;
      events = [];
      if (!r.take(0x5d /* ] */)) {
        do {
          if (events.length === maxEvents) return null;
          const e = readEvent(r);
          if (!e) return null;
          events.push(e);
        } while (r.take(0x2c /* , */));
        if (!r.take(0x5d)) return null;
      }
    } while (r.take(0x2c));
    if (!r.take(0x7d)) return null;
  }
  if (!r.atEnd() || !events || events.length === 0) return null;
  return events;
}

/** One event object of a batch, or null if it is not a valid one. */
function readEvent(r: TextReader): IngestEvent | null {
  if (!r.take(0x7b)) return null;
  const e: Partial<IngestEvent> = {};
  if (!r.take(0x7d)) {
    do {
      const name = r.name();
      if (name === "data") {
        const data = r.value();
        if (data === null) return null;
        e.data = data;
      } else if (name === "id" || name === "channel" || name === "event") {
        const value = r.string();
        if (value === null) return null;
        e[name] = value;
      } else if (name === "ts") {
        const ts = r.value();
        const n = Number(ts);
        if (ts === null || ts.charCodeAt(0) === 0x22 || !Number.isSafeInteger(n) || n < 0) return null;
        e.ts = n;
      } else if (name === "retain" || name === "reset") {
        const flag = r.value();
        if (flag !== "true" && flag !== "false") return null;
        e[name] = flag === "true";
      } else {
        return null;
      }
    } while (r.take(0x2c));
    if (!r.take(0x7d)) return null;
  }
  const { id, channel, event, data, ts } = e;
  if (id === undefined || id.length === 0 || id.length > MAX_EVENT_ID_LENGTH) return null;
  if (!isValidChannel(channel) || event === undefined || !EVENT_NAME_PATTERN.test(event)) return null;
  if (data === undefined || ts === undefined || !Number.isSafeInteger(ts)) return null;
  return { id, channel, event, data, ts, ...(e.retain ? { retain: true } : {}), ...(e.reset ? { reset: true } : {}) };
}

/** A cursor over JSON text: punctuation, member names, and values as raw text. */
class TextReader {
  pos = 0;
  constructor(private readonly text: string) {}

  private skip(): void {
    const t = this.text;
    for (let c = t.charCodeAt(this.pos); c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09; c = t.charCodeAt(++this.pos));
  }

  /** Consumes `char` (after whitespace) if it is next. */
  take(char: number): boolean {
    this.skip();
    if (this.text.charCodeAt(this.pos) !== char) return false;
    this.pos++;
    return true;
  }

  /** A value's raw text, or null if no valid JSON value is next. */
  value(): string | null {
    this.skip();
    const end = scanValue(this.text, this.pos);
    if (end < 0) return null;
    const raw = this.text.slice(this.pos, end);
    this.pos = end;
    return raw;
  }

  /** A string value, decoded, or null. */
  string(): string | null {
    this.skip();
    const end = scanString(this.text, this.pos);
    if (end < 0) return null;
    const token = this.text.slice(this.pos, end);
    this.pos = end;
    return decodeString(token);
  }

  /** A member name and its colon, or null. */
  name(): string | null {
    const name = this.string();
    return name !== null && this.take(0x3a /* : */) ? name : null;
  }

  atEnd(): boolean {
    this.skip();
    return this.pos === this.text.length;
  }
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
  const { retain, reset } = e as Record<string, unknown>;
  if (retain !== undefined && typeof retain !== "boolean") return { code: "invalid_body", message: "retain must be a boolean" };
  if (reset !== undefined && typeof reset !== "boolean") return { code: "invalid_body", message: "reset must be a boolean" };
  return null;
}
