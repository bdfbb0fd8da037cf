/**
 * Frames and ingest bodies as text. Event data travels as the JSON text its producer wrote, so the
 * frames that carry it are assembled around that text rather than serialized from values; these
 * builders are the one place that knows each shape (ServerFrame and IngestBody in wire.ts are the
 * same shapes as types).
 */
import { jsonMembers, type NumberMode, parseJson } from "./json.ts";
import type { ClientFrame, ErrorCode, IngestEvent, ServerFrame } from "./wire.ts";
import { EVENT_NAME_PATTERN, MAX_PRESENCE_STATE_BYTES, PING, PONG } from "./wire.ts";

/** The body of `POST /ingest` for `events`, each `data` spliced in as the JSON text it is. */
export function ingestBody(events: readonly IngestEvent[]): string {
  let body = '{"events":[';
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (i > 0) body += ",";
    body += `{"id":${JSON.stringify(e.id)},"channel":${JSON.stringify(e.channel)},"event":${JSON.stringify(e.event)},"data":${e.data},"ts":${e.ts}${e.retain ? ',"retain":true' : ""}${e.reset ? ',"reset":true' : ""}}`;
  }
  return `${body}]}`;
}

/** One event of an `events` frame, around its data's JSON text. */
export function eventJson(seq: number, id: string, event: string, data: string, ts: number): string {
  return `{"seq":${seq},"id":${JSON.stringify(id)},"event":${JSON.stringify(event)},"data":${data},"ts":${ts}}`;
}

/** An `events` frame of events built by {@link eventJson}. */
export function eventsFrame(events: readonly string[]): string {
  return `{"type":"events","events":[${events.join(",")}]}`;
}

/** One row of a `snapshot` frame, around the key's and the row's JSON texts (a null row: too large to retain). */
export function snapshotRowJson(schema: string, table: string, key: string, row: string | null, seq: number): string {
  return `{"schema":${JSON.stringify(schema)},"table":${JSON.stringify(table)},"key":${key},"row":${row ?? "null"},"seq":${seq}${row === null ? ',"oversized":true' : ""}}`;
}

/** A `snapshot` frame of rows built by {@link snapshotRowJson}. */
export function snapshotFrame(seq: number, rows: readonly string[], overflow = false): string {
  return `{"type":"snapshot","seq":${seq},"rows":[${rows.join(",")}]${overflow ? ',"overflow":true' : ""}}`;
}

/** Any other frame: none of them carries event data. */
export function frameJson(frame: Exclude<ServerFrame, { type: "events" | "snapshot" }>): string {
  return JSON.stringify(frame);
}

/** A client's `broadcast` as its channel's other sockets receive it, around the data's JSON text as the client wrote it. */
export function broadcastFrame(event: string, data: string, from: { id: string; user: string | null }): string {
  return `{"type":"broadcast","event":${JSON.stringify(event)},"data":${data},"from":${JSON.stringify({ id: from.id, user: from.user })}}`;
}

/**
 * A server frame as a client reads it, numbers per `numbers` (see parseJson); null for the
 * heartbeat's `pong`. Throws SyntaxError on text that is not JSON.
 */
export function parseServerFrame(text: string, numbers: NumberMode = "string"): ServerFrame | null {
  if (text === PONG) return null;
  return parseJson(text, numbers) as ServerFrame;
}

/** A message a client sends (the heartbeat is the bare text {@link PING}). */
export function clientFrameJson(frame: ClientFrame): string {
  return JSON.stringify(frame);
}

/** A client frame as the channel reads it: a broadcast's data stays the JSON text the client wrote. */
export type ClientFrameText = { type: "presence"; state: unknown; stateJson: string } | { type: "broadcast"; event: string; data: string };

/** {@link parseClientFrame}'s answer: the frame, or why it is refused (with its type, when it had a known one). */
export type ClientFrameResult = { ok: true; frame: ClientFrameText } | { ok: false; code: ErrorCode; message: string; type: ClientFrame["type"] | null };

const DATA_MEMBER = new Set(["data"]);

/**
 * Reads a message from a client. The caller checks what the socket may do (presence joined,
 * publish allowed) before it acts on the frame, and on a refusal of a frame of a known `type`
 * before it sends this refusal, so a socket that may not send a frame of that type is told so
 * first, whatever else is wrong with it.
 */
export function parseClientFrame(message: string): ClientFrameResult {
  let frame: { type?: unknown; state?: unknown; event?: unknown } | null;
  try {
    frame = JSON.parse(message);
  } catch {
    frame = null;
  }
  if (!frame || typeof frame !== "object") {
    return { ok: false, code: "unsupported_frame", message: `send JSON {"type":"presence"|"broadcast",...}, or "${PING}" for a heartbeat`, type: null };
  }
  if (frame.type === "presence") {
    const stateJson = JSON.stringify(frame.state ?? null);
    if (new TextEncoder().encode(stateJson).byteLength > MAX_PRESENCE_STATE_BYTES) {
      return { ok: false, code: "invalid_frame", message: `presence state is limited to ${MAX_PRESENCE_STATE_BYTES} bytes of JSON`, type: "presence" };
    }
    return { ok: true, frame: { type: "presence", state: frame.state ?? null, stateJson } };
  }
  if (frame.type === "broadcast") {
    if (typeof frame.event !== "string" || !EVENT_NAME_PATTERN.test(frame.event)) {
      return { ok: false, code: "invalid_frame", message: "broadcast needs an event name of 1-64 of A-Z a-z 0-9 _ . : -", type: "broadcast" };
    }
    // The data goes on as the client wrote it (its text, not a re-serialized value).
    return { ok: true, frame: { type: "broadcast", event: frame.event, data: jsonMembers(message, DATA_MEMBER)?.get("data") || "null" } };
  }
  return {
    ok: false,
    code: "unsupported_frame",
    message: `unknown message type ${JSON.stringify(String(frame.type)).slice(0, 40)}; this channel accepts presence and broadcast`,
    type: null,
  };
}

/** The media type of a channel's event stream (Server-Sent Events). */
export const EVENT_STREAM_TYPE = "text/event-stream";

/**
 * One Server-Sent Events message carrying `frame` (a frame's JSON text), with `id` (a seq: what a
 * reconnecting EventSource sends back as Last-Event-ID) when given. Lines of the frame's text
 * (JSON whitespace inside event data may hold line breaks) become `data:` lines, which the
 * receiver joins with "\n".
 */
export function sseMessage(frame: string, id?: number): string {
  const data = frame.includes("\n") || frame.includes("\r") ? frame.split(/\r\n|\r|\n/).join("\ndata: ") : frame;
  return `${id === undefined ? "" : `id: ${id}\n`}data: ${data}\n\n`;
}

/** A comment line: keeps an idle stream's connection open through proxies; EventSource ignores it. */
export const SSE_KEEPALIVE = ": keep-alive\n\n";
