/**
 * Frames and ingest bodies as text. Event data travels as the JSON text its producer wrote, so the
 * frames that carry it are assembled around that text rather than serialized from values; these
 * builders are the one place that knows each shape (ServerFrame and IngestBody in wire.ts are the
 * same shapes as types).
 */
import type { IngestEvent, ServerFrame } from "./wire.ts";

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
