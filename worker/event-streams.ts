/**
 * Event streams: a channel's frames as Server-Sent Events, for clients that cannot hold a WebSocket
 * (proxies that refuse upgrades, server-side consumers, `curl`). Each stream is an open HTTP
 * response this object writes to; unlike a hibernatable WebSocket it keeps the object in memory
 * (and billed) while it is open. A stream gets the frames a WebSocket with the same query would:
 * welcome, then replay or reset and snapshot, then live events (one message per batch, filtered).
 * Presence and broadcast are WebSocket-only.
 */
import { EVENT_STREAM_TYPE, eventsFrame, matchesEvent, type RowFilter, SSE_KEEPALIVE, sseMessage } from "../protocol/index.ts";
import { filterData, type Outgoing } from "./hub.ts";

/** Between two keep-alive comments on idle streams, ms (proxies commonly drop a connection silent for 30-60 s). */
export const STREAM_KEEPALIVE_MS = 25_000;

interface Stream {
  user: string | null;
  filter: RowFilter | null;
  writer: WritableStreamDefaultWriter<Uint8Array>;
}

const encoder = new TextEncoder();

/** Messages a stream may have waiting for its client before it is ended. */
const MAX_QUEUED = 1_000;

export class EventStreams {
  private readonly open = new Set<Stream>();
  private keepalive: ReturnType<typeof setInterval> | null = null;

  /** Streams open on this object. */
  get size(): number {
    return this.open.size;
  }

  /** Streams open for `user`. */
  countOf(user: string | null): number {
    let n = 0;
    for (const s of this.open) if (s.user === user) n++;
    return n;
  }

  /** A new stream and the response that carries it; nothing is written until `write`. */
  start(user: string | null, filter: RowFilter | null, headers: HeadersInit = {}): { stream: Stream; response: Response } {
    const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
    const stream: Stream = { user, filter, writer: writable.getWriter() };
    this.open.add(stream);
    // The timer runs only while a stream is open (an open stream keeps the object awake anyway).
    this.keepalive ??= setInterval(() => {
      for (const s of this.open) this.write(s, SSE_KEEPALIVE);
    }, STREAM_KEEPALIVE_MS);
    const response = new Response(readable, {
      headers: { "Content-Type": `${EVENT_STREAM_TYPE}; charset=utf-8`, "Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no", ...headers },
    });
    return { stream, response };
  }

  /** Sends `frame` on one stream, with `id` (a seq) when given. */
  send(stream: Stream, frame: string, id?: number): void {
    this.write(stream, sseMessage(frame, id));
  }

  /** A batch of live events, to every stream whose filter passes any: one message each, its id the last seq it carries. */
  deliver(events: readonly Outgoing[]): void {
    if (this.open.size === 0 || events.length === 0) return;
    let all: string | null = null;
    for (const s of this.open) {
      const matching = s.filter ? events.filter((e) => matchesEvent(s.filter!, filterData(e))) : events;
      if (matching.length === 0) continue;
      const text =
        matching === events
          ? (all ??= sseMessage(eventsFrame(events.map((e) => e.json)), events.at(-1)!.seq))
          : sseMessage(eventsFrame(matching.map((e) => e.json)), matching.at(-1)!.seq);
      this.write(s, text);
    }
  }

  /** Ends a stream (after a refused join, say); the client's EventSource reconnects unless told otherwise. */
  end(stream: Stream): void {
    this.drop(stream);
    stream.writer.close().catch(() => {});
  }

  /** Ends every stream: their clients reconnect and are told what changed as they join again. */
  endAll(): void {
    for (const s of [...this.open]) this.end(s);
  }

  private write(stream: Stream, text: string): void {
    // A client that stopped reading would have its messages queue here without end: past
    // MAX_QUEUED, its stream ends, and it resumes from its Last-Event-ID when it reconnects.
    if ((stream.writer.desiredSize ?? 0) < -MAX_QUEUED) return this.end(stream);
    // A write fails once the client has gone: the stream is dropped then.
    stream.writer.write(encoder.encode(text)).catch(() => this.drop(stream));
  }

  private drop(stream: Stream): void {
    this.open.delete(stream);
    if (this.open.size === 0 && this.keepalive !== null) {
      clearInterval(this.keepalive);
      this.keepalive = null;
    }
  }
}
