/**
 * The Channel Durable Object: one per channel. It sequences events, keeps the replay log and
 * dedupe ids in its SQLite, and fans frames out to hibernatable WebSockets.
 *
 * Hibernation-safe by construction: everything needed after a wake-up is in SQLite (seq, epoch,
 * log) or in socket attachments; nothing keeps the object awake (no timers), and pings are
 * answered by the runtime's auto-response.
 */
import { DurableObject } from "cloudflare:workers";
import type { ErrorCode, IngestEvent, IngestResult, ResetReason, ServerFrame } from "../protocol/index.ts";
import { PING, PONG, SIGNATURE_TOLERANCE_SECONDS } from "../protocol/index.ts";
import { resolveWorkerConfig, type WorkerConfig } from "./config.ts";
import type { Env } from "./env.ts";

/** Header the Worker sets on a forwarded upgrade: the channel's name. */
export const CHANNEL_NAME_HEADER = "X-Realtime-Channel";
/** Header the Worker sets on a forwarded upgrade: the verified token's `sub` (absent: anonymous). */
export const USER_HEADER = "X-Realtime-User";

/** Ids remembered for dedupe beyond the replay log: covers a relay re-sending its last batches. */
const DEDUPE_MIN_IDS = 10_000;

/**
 * And ids are remembered at least this long: twice the signature tolerance, so a captured ingest
 * request replayed while its signature is still accepted finds every one of its ids here.
 */
const DEDUPE_MIN_AGE_MS = 2 * SIGNATURE_TOLERANCE_SECONDS * 1000;

/** Publishes between two trims of the log (see publish()). */
const TRIM_EVERY = 100;
const TRIM_MAX_INTERVAL_MS = 60_000;

/** Replay is sent in frames of at most this many events, so one frame stays small. */
const REPLAY_FRAME_EVENTS = 500;

/**
 * Event data is stored in pieces of at most this many UTF-16 units (at most 1.5 MB of UTF-8):
 * Durable Object SQLite refuses strings and rows over 2 MB, and an event may be larger.
 */
const LOG_CHUNK_UNITS = 500_000;

/** Per-socket state that must survive hibernation (attachments are limited to 16 KiB). */
interface SocketAttachment {
  connectedAt: number;
  /** The token's subject, or null for an anonymous socket on a public channel. */
  user: string | null;
  /** Inbound rate window: its start (ms) and the messages counted in it. */
  windowStart: number;
  windowCount: number;
}

const SCHEMA = `
  create table if not exists meta (key text primary key, value text not null);
  create table if not exists log (
    seq integer primary key,
    id text not null,
    event text not null,
    data text not null,
    parts integer not null default 0,
    ts integer not null,
    stored_at integer not null
  );
  create table if not exists log_part (seq integer not null, part integer not null, chunk text not null, primary key (seq, part));
  create table if not exists seen (id text primary key, seq integer not null, at integer not null default 0);
  create index if not exists seen_by_seq on seen (seq);
`;

/** A channel's counters, as `GET /channels/:name/stats` returns them. */
export interface ChannelStats {
  channel: string | null;
  epoch: string;
  seq: number;
  /** Open WebSockets (hibernated ones included). */
  sockets: number;
  replayLogEvents: number;
  replayLogOldestSeq: number | null;
  lastPublishAt: string | null;
  /** Times the object was constructed: its first use, then once per wake-up from hibernation or eviction. */
  wakes: number;
}

export class Channel extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private readonly config: WorkerConfig;
  private readonly epoch: string;
  private seq: number;
  private name: string | null;
  /** Seq and time of the last trim (in memory: after a wake-up the first publish trims). */
  private trimmedAt = 0;
  private trimmedTime = 0;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.config = resolveWorkerConfig(env);
    this.sql.exec(SCHEMA);
    // Objects created before seen.at existed get the column (every id counts as old).
    if (!this.sql.exec<{ name: string }>("pragma table_info(seen)").toArray().some((c) => c.name === "at")) {
      this.sql.exec("alter table seen add column at integer not null default 0");
    }
    const meta = new Map(this.sql.exec<{ key: string; value: string }>("select key, value from meta").toArray().map((r) => [r.key, r.value]));
    let epoch = meta.get("epoch");
    if (!epoch) {
      // A new epoch means a new history: a client holding seqs of another one must reset.
      epoch = crypto.randomUUID();
      this.sql.exec("insert into meta (key, value) values ('epoch', ?), ('seq', '0')", epoch);
    }
    this.epoch = epoch;
    this.seq = Number(meta.get("seq") ?? 0);
    // Counts constructions: each one is a wake-up (first use, or after hibernation/eviction).
    this.sql.exec("insert into meta (key, value) values ('wakes', '1') on conflict (key) do update set value = cast(value as integer) + 1");
    this.name = meta.get("name") ?? null;
    // Heartbeats never wake a hibernated object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING, PONG));
  }

  /**
   * Stores new events (dropping ids already stored), assigns each a seq, and sends one frame to
   * every socket. Storage is committed before this returns, so the Worker's 200 means durable.
   */
  publish(channel: string, events: IngestEvent[]): IngestResult {
    this.remember(channel);
    const fresh: string[] = [];
    const rows: { s: number; i: string; e: string; d: string; p: number; t: number }[] = [];
    const parts: [seq: number, part: number, chunk: string][] = [];
    let duplicates = 0;
    const now = Date.now();
    const before = this.seq;
    try {
      this.ctx.storage.transactionSync(() => {
        // A constant number of statements per publish, whatever its size: each sql.exec is a
        // call into the runtime, and one per event per table made a 400-event batch cost ~0.2 ms
        // an event here. The rows travel as one JSON parameter (DO SQLite allows 100 bound
        // parameters per statement); event data rides in it as a JSON string, so SQLite stores
        // its exact text.
        const known = new Set(
          this.sql.exec<{ id: string }>("select value as id from json_each(?) where value in (select id from seen)", JSON.stringify(events.map((e) => e.id))).toArray().map((r) => r.id),
        );
        for (const e of events) {
          if (known.has(e.id)) {
            duplicates++;
            continue;
          }
          known.add(e.id); // a repeat inside this batch is a duplicate too
          const seq = ++this.seq;
          const data = JSON.stringify(e.data ?? null);
          const [head, ...rest] = chunks(data);
          rows.push({ s: seq, i: e.id, e: e.event, d: head ?? "", p: rest.length, t: e.ts });
          rest.forEach((chunk, i) => parts.push([seq, i + 1, chunk]));
          fresh.push(eventJson(seq, e.id, e.event, data, e.ts));
        }
        if (rows.length === 0) return;
        const json = JSON.stringify(rows);
        this.sql.exec("insert into seen (id, seq, at) select value ->> '$.i', value ->> '$.s', ? from json_each(?)", now, json);
        this.sql.exec(
          `insert into log (seq, id, event, data, parts, ts, stored_at)
           select value ->> '$.s', value ->> '$.i', value ->> '$.e', value ->> '$.d', value ->> '$.p', value ->> '$.t', ? from json_each(?)`,
          now,
          json,
        );
        for (const [seq, part, chunk] of parts) this.sql.exec("insert into log_part (seq, part, chunk) values (?, ?, ?)", seq, part, chunk);
        this.sql.exec(
          "insert into meta (key, value) values ('seq', ?), ('last_publish', ?) on conflict (key) do update set value = excluded.value",
          String(this.seq),
          String(now),
        );
        // Trimming costs three statements; doing it every TRIM_EVERY events (or when the oldest
        // entry may have aged out) keeps the bounds within a few percent for a fraction of the cost.
        if (this.seq - this.trimmedAt >= TRIM_EVERY || now - this.trimmedTime >= TRIM_MAX_INTERVAL_MS) this.trim(now);
      });
    } catch (err) {
      this.seq = before;
      throw err;
    }
    if (fresh.length > 0) this.broadcast(eventsFrame(fresh));
    return { accepted: fresh.length, duplicates };
  }

  /** What an operator (or the benchmark) wants to know; served by `GET /channels/:name/stats`. */
  stats(): ChannelStats {
    const meta = new Map(this.sql.exec<{ key: string; value: string }>("select key, value from meta").toArray().map((r) => [r.key, r.value]));
    const log = this.sql.exec<{ n: number; oldest: number | null }>("select count(*) as n, min(seq) as oldest from log").one();
    const lastPublish = meta.get("last_publish");
    return {
      channel: this.name,
      epoch: this.epoch,
      seq: this.seq,
      sockets: this.ctx.getWebSockets().length,
      replayLogEvents: log.n,
      replayLogOldestSeq: log.oldest,
      lastPublishAt: lastPublish ? new Date(Number(lastPublish)).toISOString() : null,
      wakes: Number(meta.get("wakes") ?? 0),
    };
  }

  /** Accepts a WebSocket (forwarded by the Worker), greets it, and replays what it missed. */
  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return Response.json({ error: { code: "upgrade_required", message: "expected a WebSocket upgrade" } }, { status: 426 });
    }
    const channel = request.headers.get(CHANNEL_NAME_HEADER);
    if (channel) this.remember(channel);
    const url = new URL(request.url);
    const since = url.searchParams.get("since");
    const epoch = url.searchParams.get("epoch");

    const user = request.headers.get(USER_HEADER);
    const userTag = user === null ? null : await tagFor(user);
    const { limits } = this.config;

    const { 0: client, 1: server } = new WebSocketPair();
    // Tags let getWebSockets(tag) count a user's sockets without waking every attachment.
    this.ctx.acceptWebSocket(server, userTag ? [userTag] : []);
    server.serializeAttachment({ connectedAt: Date.now(), user, windowStart: 0, windowCount: 0 } satisfies SocketAttachment);
    // Limits are checked with the socket accepted, so the refusal can say why in an error frame
    // (a browser cannot read the body of a refused upgrade).
    if (this.ctx.getWebSockets().length > limits.socketsPerChannel) {
      this.refuse(server, "channel_full", `this channel has its maximum of ${limits.socketsPerChannel} connections (MAX_SOCKETS_PER_CHANNEL)`);
      return new Response(null, { status: 101, webSocket: client });
    }
    if (userTag && this.ctx.getWebSockets(userTag).length > limits.connectionsPerUser) {
      this.refuse(server, "too_many_connections", `at most ${limits.connectionsPerUser} connections per user on one channel (MAX_CONNECTIONS_PER_USER)`);
      return new Response(null, { status: 101, webSocket: client });
    }
    // No await between accepting and replaying: a publish cannot slip in between, so the
    // socket sees welcome, then replay, then live events, with no gap and no overlap.
    send(server, { type: "welcome", channel: this.name ?? "", epoch: this.epoch, seq: this.seq });
    if (since !== null && since !== "") {
      const sinceSeq = /^\d{1,15}$/.test(since) ? Number(since) : NaN;
      if (Number.isNaN(sinceSeq)) {
        this.refuse(server, "invalid_query", "since must be a non-negative integer: the seq of the last event received");
      } else {
        this.replay(server, sinceSeq, epoch ?? "");
      }
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  /**
   * Inbound messages: size and rate limits first (hibernation-safe: the rate window lives in the
   * socket's attachment), then the protocol, which has no client messages yet besides pings
   * (answered by the runtime, never counted here).
   */
  override webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): void {
    const { limits } = this.config;
    const size = typeof message === "string" ? new TextEncoder().encode(message).byteLength : message.byteLength;
    if (size > limits.frameBytes) {
      return this.refuse(ws, "frame_too_large", `messages are limited to ${limits.frameBytes} bytes (MAX_FRAME_BYTES)`, 1009);
    }
    const attachment = ws.deserializeAttachment() as SocketAttachment;
    const now = Date.now();
    if (now - attachment.windowStart >= 1000) {
      attachment.windowStart = now;
      attachment.windowCount = 0;
    }
    attachment.windowCount++;
    ws.serializeAttachment(attachment);
    if (attachment.windowCount > limits.messagesPerSecond) {
      return this.refuse(ws, "rate_limited", `at most ${limits.messagesPerSecond} messages per second (MAX_MESSAGES_PER_SECOND)`);
    }
    send(ws, {
      type: "error",
      code: "unsupported_frame",
      message: `this channel accepts no messages; send "${PING}" for a heartbeat`,
    });
  }

  override webSocketClose(ws: WebSocket, code: number, reason: string): void {
    // Completes the closing handshake; 1005/1006 are reserved and cannot be sent back.
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }

  override webSocketError(): void {
    // The socket is gone; getWebSockets() stops returning it. Nothing to clean up.
  }

  private replay(ws: WebSocket, since: number, epoch: string): void {
    if (epoch !== this.epoch || since > this.seq) return this.reset(ws, "epoch");
    if (since === this.seq) return;
    this.trim(Date.now());
    const oldest = this.sql.exec<{ seq: number | null }>("select min(seq) as seq from log").one().seq;
    if (oldest === null || since < oldest - 1) return this.reset(ws, "gap");
    let batch: string[] = [];
    for (const row of this.sql.exec<{ seq: number; id: string; event: string; data: string; parts: number; ts: number }>(
      "select seq, id, event, data, parts, ts from log where seq > ? order by seq",
      since,
    ).toArray()) {
      const data = row.parts === 0 ? row.data : row.data + this.sql.exec<{ chunk: string }>("select chunk from log_part where seq = ? order by part", row.seq).toArray().map((r) => r.chunk).join("");
      batch.push(eventJson(row.seq, row.id, row.event, data, row.ts));
      if (batch.length === REPLAY_FRAME_EVENTS) {
        ws.send(eventsFrame(batch));
        batch = [];
      }
    }
    if (batch.length > 0) ws.send(eventsFrame(batch));
  }

  private reset(ws: WebSocket, reason: ResetReason): void {
    send(ws, { type: "reset", reason, epoch: this.epoch, seq: this.seq });
  }

  private refuse(ws: WebSocket, code: ErrorCode, message: string, closeCode = 1008): void {
    send(ws, { type: "error", code, message });
    ws.close(closeCode, code);
  }

  /** Drops log entries past the count or age bound, and dedupe ids past both of theirs. */
  private trim(now: number): void {
    this.trimmedAt = this.seq;
    this.trimmedTime = now;
    const { replayMaxEvents, replayMaxAgeMs } = this.config;
    this.sql.exec("delete from log where seq <= ? or stored_at < ?", this.seq - replayMaxEvents, now - replayMaxAgeMs);
    this.sql.exec("delete from log_part where seq < coalesce((select min(seq) from log), ?)", this.seq + 1);
    this.sql.exec("delete from seen where seq <= ? and at < ?", this.seq - Math.max(replayMaxEvents, DEDUPE_MIN_IDS), now - DEDUPE_MIN_AGE_MS);
  }

  private broadcast(frame: string): void {
    for (const ws of this.ctx.getWebSockets()) {
      try {
        ws.send(frame);
      } catch {
        // A socket closing right now; its close handler will run.
      }
    }
  }

  private remember(channel: string): void {
    if (this.name === channel) return;
    this.name = channel;
    this.sql.exec("insert into meta (key, value) values ('name', ?) on conflict (key) do update set value = excluded.value", channel);
  }
}

/** A WebSocket tag for a user (tags are limited to 256 characters: long subjects are hashed). */
async function tagFor(user: string): Promise<string> {
  if (user.length <= 200) return `u:${user}`;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(user));
  return `u#${Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function send(ws: WebSocket, frame: ServerFrame): void {
  ws.send(JSON.stringify(frame));
}

/**
 * One event of an `events` frame, built from its already-serialized data: the data is
 * stringified once per publish, not once per socket or once for the log and again for the frame.
 */
function eventJson(seq: number, id: string, event: string, data: string, ts: number): string {
  return `{"seq":${seq},"id":${JSON.stringify(id)},"event":${JSON.stringify(event)},"data":${data},"ts":${ts}}`;
}

/** Splits `text` into pieces of at most LOG_CHUNK_UNITS, never between the halves of a surrogate pair. */
function chunks(text: string): string[] {
  const out: string[] = [];
  for (let start = 0; start < text.length; ) {
    let end = Math.min(start + LOG_CHUNK_UNITS, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
    out.push(text.slice(start, end));
    start = end;
  }
  return out;
}

function eventsFrame(events: string[]): string {
  return `{"type":"events","events":[${events.join(",")}]}`;
}
