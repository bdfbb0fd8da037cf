/**
 * The Channel Durable Object: one per channel. It sequences events, keeps the replay log, dedupe
 * ids and retained rows in its SQLite, and fans frames out to hibernatable WebSockets, each
 * filtered as its subscriber asked; it also keeps presence and relays client broadcasts.
 *
 * Hibernation-safe by construction: everything needed after a wake-up is in SQLite (seq, epoch,
 * log, state, filters) or in socket attachments and tags (who, which filter, presence); the only
 * timer is the storage alarm of a conflating channel, and pings are answered by the runtime's
 * auto-response.
 */
import { DurableObject } from "cloudflare:workers";
import type { ErrorCode, IngestEvent, IngestResult, PresenceMember, ResetReason, RowFilter, ServerFrame } from "../protocol/index.ts";
import {
  channelMatches,
  EVENT_NAME_PATTERN,
  MAX_PRESENCE_STATE_BYTES,
  matchesEvent,
  matchesRow,
  parseFilter,
  PING,
  PONG,
  SIGNATURE_TOLERANCE_SECONDS,
} from "../protocol/index.ts";
import { resolveWorkerConfig, type WorkerConfig } from "./config.ts";
import type { Env } from "./env.ts";
import { parseRow, RETAINED_SCHEMA, RetainedState, snapshotRowJson } from "./retained.ts";

/** Header the Worker sets on a forwarded upgrade: the channel's name. */
export const CHANNEL_NAME_HEADER = "X-Realtime-Channel";
/** Header the Worker sets on a forwarded upgrade: the verified token's `sub` (absent: anonymous). */
export const USER_HEADER = "X-Realtime-User";
/** Header the Worker sets on a forwarded upgrade when the token may broadcast on this channel. */
export const CAN_PUBLISH_HEADER = "X-Realtime-Can-Publish";

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

/** Socket tags (at most 10 per socket, 256 characters each): fixed at accept time. */
const TAG_UNFILTERED = "nf";
const TAG_PRESENCE = "p";

/** Per-socket state that must survive hibernation (attachments are limited to 16 KiB). */
interface SocketAttachment {
  /** The connection's id, as presence lists it. */
  id: string;
  connectedAt: number;
  /** The token's subject, or null for an anonymous socket on a public channel. */
  user: string | null;
  /** Inbound rate window: its start (ms) and the messages counted in it. */
  windowStart: number;
  windowCount: number;
  /** The socket's row filter, or null. */
  filter: RowFilter | null;
  /** Listed in presence (joined with `presence=1`). */
  presence: boolean;
  /** Presence state the client set. */
  state: unknown;
  /** May send `broadcast` messages (the token's publish claim covers this channel). */
  canPublish: boolean;
  /** Its leave was announced (close and error can both fire). */
  left?: boolean;
}

/** An event ready to send: its JSON text and its data (for filters). */
interface Outgoing {
  json: string;
  data: unknown;
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
  create table if not exists filters (tag text primary key, filter text not null);
  ${RETAINED_SCHEMA}
`;

/** A channel's counters, as `GET /channels/:name/stats` returns them. */
export interface ChannelStats {
  channel: string | null;
  epoch: string;
  seq: number;
  /** Open WebSockets (hibernated ones included). */
  sockets: number;
  /** Sockets listed in presence. */
  presence: number;
  replayLogEvents: number;
  replayLogOldestSeq: number | null;
  lastPublishAt: string | null;
  /** Times the object was constructed: its first use, then once per wake-up from hibernation or eviction. */
  wakes: number;
  /** Retained rows (watches with `retain => true`). */
  retained: { rows: number; bytes: number; overflow: boolean };
  /** Conflation window in ms, or null. */
  conflateMs: number | null;
}

export class Channel extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  private readonly config: WorkerConfig;
  private readonly epoch: string;
  private readonly meta: Map<string, string>;
  private readonly state: RetainedState;
  /** Filter tag -> filter, for every filter a socket joined with (kept in SQLite too). */
  private readonly filters: Map<string, RowFilter>;
  private seq: number;
  private name: string | null;
  /** Seq and time of the last trim (in memory: after a wake-up the first publish trims). */
  private trimmedAt = 0;
  private trimmedTime = 0;
  private alarmPending = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.config = resolveWorkerConfig(env);
    this.sql.exec(SCHEMA);
    // Objects created before seen.at existed get the column (every id counts as old).
    if (!this.sql.exec<{ name: string }>("pragma table_info(seen)").toArray().some((c) => c.name === "at")) {
      this.sql.exec("alter table seen add column at integer not null default 0");
    }
    this.meta = new Map(this.sql.exec<{ key: string; value: string }>("select key, value from meta").toArray().map((r) => [r.key, r.value]));
    let epoch = this.meta.get("epoch");
    if (!epoch) {
      // A new epoch means a new history: a client holding seqs of another one must reset.
      epoch = crypto.randomUUID();
      this.setMeta("epoch", epoch);
      this.setMeta("seq", "0");
    }
    this.epoch = epoch;
    this.seq = Number(this.meta.get("seq") ?? 0);
    this.name = this.meta.get("name") ?? null;
    // Counts constructions: each one is a wake-up (first use, or after hibernation/eviction).
    this.setMeta("wakes", String(Number(this.meta.get("wakes") ?? 0) + 1));
    this.state = new RetainedState(this.sql, this.config.stateMaxRows, this.config.stateMaxBytes, {
      get: (k) => this.meta.get(k),
      set: (k, v) => this.setMeta(k, v),
    });
    this.filters = new Map(this.sql.exec<{ tag: string; filter: string }>("select tag, filter from filters").toArray().map((r) => [r.tag, JSON.parse(r.filter) as RowFilter]));
    // Heartbeats never wake a hibernated object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING, PONG));
  }

  private setMeta(key: string, value: string): void {
    this.meta.set(key, value);
    this.sql.exec("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value", key, value);
  }

  /** The conflation window of this channel, or null (CONFLATE, by name pattern). */
  private get conflateMs(): number | null {
    if (!this.name) return null;
    return this.config.conflate.find((c) => channelMatches(c.pattern, this.name!, null))?.ms ?? null;
  }

  /**
   * Stores new events (dropping ids already stored), assigns each a seq, updates retained rows,
   * and sends one frame per socket (or, conflating, at the end of the window). Storage is
   * committed before this returns, so the Worker's 200 means durable.
   */
  publish(channel: string, events: IngestEvent[]): IngestResult {
    this.remember(channel);
    const fresh: Outgoing[] = [];
    const retained: { seq: number; data: unknown }[] = [];
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
          fresh.push({ json: eventJson(seq, e.id, e.event, data, e.ts), data: e.data });
          if (e.retain) retained.push({ seq, data: e.data });
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
        this.state.apply(retained);
        this.setMeta("seq", String(this.seq));
        this.setMeta("last_publish", String(now));
        // Trimming costs three statements; doing it every TRIM_EVERY events (or when the oldest
        // entry may have aged out) keeps the bounds within a few percent for a fraction of the cost.
        if (this.seq - this.trimmedAt >= TRIM_EVERY || now - this.trimmedTime >= TRIM_MAX_INTERVAL_MS) this.trim(now);
      });
    } catch (err) {
      this.seq = before;
      throw err;
    }
    if (fresh.length > 0) {
      const window = this.conflateMs;
      if (window === null) this.deliver(fresh);
      else if (!this.alarmPending) {
        // Conflating: deliver at the end of the window, from the log (see alarm()).
        this.alarmPending = true;
        void this.ctx.storage.setAlarm(now + window);
      }
    }
    return { accepted: fresh.length, duplicates };
  }

  /**
   * End of a conflation window: sends what arrived since the last delivery, keeping only the
   * latest event per row (key) among change events; other events all go out.
   */
  override async alarm(): Promise<void> {
    this.alarmPending = false;
    const from = Number(this.meta.get("delivered_seq") ?? 0);
    if (from >= this.seq) return;
    const latest = new Map<string, Outgoing>();
    let anonymous = 0;
    for (const e of this.logFrom(from)) {
      const d = e.data as { schema?: unknown; table?: unknown; key?: unknown } | null;
      const rowKey = d && typeof d === "object" && d.key && typeof d.key === "object" ? `${String(d.schema)}.${String(d.table)}:${JSON.stringify(d.key)}` : `#${anonymous++}`;
      latest.delete(rowKey); // re-inserted: Map order follows the latest seq
      latest.set(rowKey, e);
    }
    this.setMeta("delivered_seq", String(this.seq));
    this.deliver([...latest.values()]);
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
    const filterText = url.searchParams.get("filter");
    const parsedFilter = filterText ? parseFilter(filterText) : null;
    const filter = parsedFilter?.ok ? parsedFilter.filter : null;
    const filterTag = filter ? await tagForFilter(filterText!) : TAG_UNFILTERED;
    const wantsPresence = url.searchParams.get("presence") === "1";
    const user = request.headers.get(USER_HEADER);
    const userTag = user === null ? null : await tagFor(user);
    const { limits } = this.config;

    const { 0: client, 1: server } = new WebSocketPair();
    // Tags let getWebSockets(tag) find a user's sockets, a filter's sockets, or presence members
    // without reading every attachment.
    this.ctx.acceptWebSocket(server, [filterTag, ...(userTag ? [userTag] : []), ...(wantsPresence ? [TAG_PRESENCE] : [])]);
    const me: SocketAttachment = {
      id: crypto.randomUUID(),
      connectedAt: Date.now(),
      user,
      windowStart: 0,
      windowCount: 0,
      filter,
      presence: wantsPresence,
      state: null,
      canPublish: request.headers.get(CAN_PUBLISH_HEADER) === "1",
    };
    server.serializeAttachment(me);
    const refused = (code: ErrorCode, message: string) => {
      me.left = true;
      server.serializeAttachment(me);
      this.refuse(server, code, message);
      return new Response(null, { status: 101, webSocket: client });
    };
    // Refusals go out as error frames on an accepted socket: a browser cannot read the body of a
    // refused upgrade.
    if (parsedFilter && !parsedFilter.ok) return refused("invalid_filter", parsedFilter.message);
    if (this.ctx.getWebSockets().length > limits.socketsPerChannel) {
      return refused("channel_full", `this channel has its maximum of ${limits.socketsPerChannel} connections (MAX_SOCKETS_PER_CHANNEL)`);
    }
    if (userTag && this.ctx.getWebSockets(userTag).length > limits.connectionsPerUser) {
      return refused("too_many_connections", `at most ${limits.connectionsPerUser} connections per user on one channel (MAX_CONNECTIONS_PER_USER)`);
    }
    if (filter && !this.filters.has(filterTag)) {
      this.filters.set(filterTag, filter);
      this.sql.exec("insert into filters (tag, filter) values (?, ?) on conflict (tag) do nothing", filterTag, JSON.stringify(filter));
    }
    // No await from here on: a publish cannot slip in between, so the socket sees welcome, then
    // snapshot or replay, then live events, with no gap and no overlap.
    send(server, { type: "welcome", channel: this.name ?? "", epoch: this.epoch, seq: this.seq, member: me.id });
    if (since !== null && since !== "") {
      const sinceSeq = /^\d{1,15}$/.test(since) ? Number(since) : NaN;
      if (Number.isNaN(sinceSeq)) {
        me.left = true;
        server.serializeAttachment(me);
        this.refuse(server, "invalid_query", "since must be a non-negative integer: the seq of the last event received");
        return new Response(null, { status: 101, webSocket: client });
      }
      this.replay(server, sinceSeq, epoch ?? "", filter);
    } else {
      this.sendSnapshot(server, filter);
    }
    if (wantsPresence) {
      send(server, { type: "presence", members: this.members() });
      this.toPresence({ type: "presence_diff", joins: [member(me)], leaves: [] }, server);
    }
    return new Response(null, { status: 101, webSocket: client });
  }

  /**
   * Inbound messages: size and rate limits first (hibernation-safe: the rate window lives in the
   * socket's attachment), then `presence` (set this connection's state) and `broadcast` (to the
   * channel's other sockets, never stored). Pings are answered by the runtime, never counted here.
   */
  override webSocketMessage(ws: WebSocket, message: string | ArrayBuffer): void {
    const { limits } = this.config;
    const size = typeof message === "string" ? new TextEncoder().encode(message).byteLength : message.byteLength;
    if (size > limits.frameBytes) {
      return this.refuse(ws, "frame_too_large", `messages are limited to ${limits.frameBytes} bytes (MAX_FRAME_BYTES)`, 1009);
    }
    const me = ws.deserializeAttachment() as SocketAttachment;
    const now = Date.now();
    if (now - me.windowStart >= 1000) {
      me.windowStart = now;
      me.windowCount = 0;
    }
    me.windowCount++;
    ws.serializeAttachment(me);
    if (me.windowCount > limits.messagesPerSecond) {
      return this.refuse(ws, "rate_limited", `at most ${limits.messagesPerSecond} messages per second (MAX_MESSAGES_PER_SECOND)`);
    }
    let frame: { type?: unknown; state?: unknown; event?: unknown; data?: unknown };
    try {
      frame = typeof message === "string" ? JSON.parse(message) : null;
    } catch {
      frame = null as never;
    }
    if (!frame || typeof frame !== "object") {
      return send(ws, { type: "error", code: "unsupported_frame", message: `send JSON {"type":"presence"|"broadcast",...}, or "${PING}" for a heartbeat` });
    }
    if (frame.type === "presence") {
      if (!me.presence) return send(ws, { type: "error", code: "invalid_frame", message: "join with presence=1 to set a presence state" });
      const text = JSON.stringify(frame.state ?? null);
      if (new TextEncoder().encode(text).byteLength > MAX_PRESENCE_STATE_BYTES) {
        return send(ws, { type: "error", code: "invalid_frame", message: `presence state is limited to ${MAX_PRESENCE_STATE_BYTES} bytes of JSON` });
      }
      me.state = frame.state ?? null;
      ws.serializeAttachment(me);
      return this.toPresence({ type: "presence_diff", joins: [member(me)], leaves: [] });
    }
    if (frame.type === "broadcast") {
      if (!me.canPublish) return send(ws, { type: "error", code: "publish_forbidden", message: "the token's publish claim does not include this channel" });
      if (typeof frame.event !== "string" || !EVENT_NAME_PATTERN.test(frame.event)) {
        return send(ws, { type: "error", code: "invalid_frame", message: "broadcast needs an event name of 1-64 of A-Z a-z 0-9 _ . : -" });
      }
      const out = JSON.stringify({ type: "broadcast", event: frame.event, data: frame.data ?? null, from: { id: me.id, user: me.user } } satisfies ServerFrame);
      for (const other of this.ctx.getWebSockets()) if (other !== ws) trySend(other, out);
      return;
    }
    send(ws, { type: "error", code: "unsupported_frame", message: `unknown message type ${JSON.stringify(String(frame.type)).slice(0, 40)}; this channel accepts presence and broadcast` });
  }

  override webSocketClose(ws: WebSocket, code: number, reason: string): void {
    this.leave(ws);
    // Completes the closing handshake; 1005/1006 are reserved and cannot be sent back.
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, reason);
    } catch {
      // already closed
    }
  }

  override webSocketError(ws: WebSocket): void {
    // An abrupt disconnect: the socket is gone, its presence must go too.
    this.leave(ws);
  }

  /** What an operator (or the benchmark) wants to know; served by `GET /channels/:name/stats`. */
  stats(): ChannelStats {
    const log = this.sql.exec<{ n: number; oldest: number | null }>("select count(*) as n, min(seq) as oldest from log").one();
    const lastPublish = this.meta.get("last_publish");
    return {
      channel: this.name,
      epoch: this.epoch,
      seq: this.seq,
      sockets: this.ctx.getWebSockets().length,
      presence: this.members().length,
      replayLogEvents: log.n,
      replayLogOldestSeq: log.oldest,
      lastPublishAt: lastPublish ? new Date(Number(lastPublish)).toISOString() : null,
      wakes: Number(this.meta.get("wakes") ?? 0),
      retained: this.state.size(),
      conflateMs: this.conflateMs,
    };
  }

  /** Sends events to every socket: one frame per filter, computed once and sent to its sockets. */
  private deliver(events: Outgoing[]): void {
    if (events.length === 0) return;
    const all = eventsFrame(events.map((e) => e.json));
    for (const ws of this.ctx.getWebSockets(TAG_UNFILTERED)) trySend(ws, all);
    for (const [tag, filter] of this.filters) {
      const sockets = this.ctx.getWebSockets(tag);
      if (sockets.length === 0) continue;
      const matching = events.filter((e) => matchesEvent(filter, e.data));
      if (matching.length === 0) continue;
      const frame = eventsFrame(matching.map((e) => e.json));
      for (const ws of sockets) trySend(ws, frame);
    }
  }

  private replay(ws: WebSocket, since: number, epoch: string, filter: RowFilter | null): void {
    if (epoch !== this.epoch || since > this.seq) return this.reset(ws, "epoch", filter);
    if (since === this.seq) return;
    this.trim(Date.now());
    const oldest = this.sql.exec<{ seq: number | null }>("select min(seq) as seq from log").one().seq;
    if (oldest === null || since < oldest - 1) return this.reset(ws, "gap", filter);
    let batch: string[] = [];
    for (const e of this.logFrom(since)) {
      if (filter && !matchesEvent(filter, e.data)) continue;
      batch.push(e.json);
      if (batch.length === REPLAY_FRAME_EVENTS) {
        ws.send(eventsFrame(batch));
        batch = [];
      }
    }
    if (batch.length > 0) ws.send(eventsFrame(batch));
  }

  /** Events after `seq` from the log, in order, with their data parsed. */
  private logFrom(seq: number): Outgoing[] {
    return this.sql
      .exec<{ seq: number; id: string; event: string; data: string; parts: number; ts: number }>("select seq, id, event, data, parts, ts from log where seq > ? order by seq", seq)
      .toArray()
      .map((row) => {
        const data =
          row.parts === 0
            ? row.data
            : row.data + this.sql.exec<{ chunk: string }>("select chunk from log_part where seq = ? order by part", row.seq).toArray().map((r) => r.chunk).join("");
        return { json: eventJson(row.seq, row.id, row.event, data, row.ts), data: JSON.parse(data) };
      });
  }

  private reset(ws: WebSocket, reason: ResetReason, filter: RowFilter | null): void {
    send(ws, { type: "reset", reason, epoch: this.epoch, seq: this.seq });
    // A retaining channel hands the state over with the reset: the client reloads from it.
    this.sendSnapshot(ws, filter);
  }

  /** The retained rows (as the socket's filter allows), if this channel retains any. */
  private sendSnapshot(ws: WebSocket, filter: RowFilter | null): void {
    if (!this.state.active) return;
    if (this.state.overflowed) return send(ws, { type: "snapshot", seq: this.seq, rows: [], overflow: true });
    const rows = this.state.rows().filter((r) => !filter || matchesRow(filter, parseRow(r).row));
    ws.send(`{"type":"snapshot","seq":${this.seq},"rows":[${rows.map(snapshotRowJson).join(",")}]}`);
  }

  /** Presence members: listed sockets that have not left. */
  private members(except?: WebSocket): PresenceMember[] {
    return this.ctx
      .getWebSockets(TAG_PRESENCE)
      .filter((ws) => ws !== except)
      .map((ws) => ws.deserializeAttachment() as SocketAttachment)
      .filter((a) => a && !a.left)
      .map(member);
  }

  /** Sends a frame to every presence member (but `except`). */
  private toPresence(frame: ServerFrame, except?: WebSocket): void {
    const text = JSON.stringify(frame);
    for (const ws of this.ctx.getWebSockets(TAG_PRESENCE)) if (ws !== except) trySend(ws, text);
  }

  /** A socket went away: announce its leave once. */
  private leave(ws: WebSocket): void {
    let me: SocketAttachment | null = null;
    try {
      me = ws.deserializeAttachment() as SocketAttachment;
    } catch {
      return;
    }
    if (!me || me.left) return;
    me.left = true;
    try {
      ws.serializeAttachment(me);
    } catch {
      // the socket is closed; its attachment no longer matters
    }
    if (me.presence) this.toPresence({ type: "presence_diff", joins: [], leaves: [member(me)] }, ws);
  }

  private refuse(ws: WebSocket, code: ErrorCode, message: string, closeCode = 1008): void {
    send(ws, { type: "error", code, message });
    ws.close(closeCode, code);
  }

  /** Drops log entries past the count or age bound (never one a conflation window has yet to send), and dedupe ids past both of theirs. */
  private trim(now: number): void {
    this.trimmedAt = this.seq;
    this.trimmedTime = now;
    const { replayMaxEvents, replayMaxAgeMs } = this.config;
    const undelivered = this.conflateMs === null ? this.seq : Number(this.meta.get("delivered_seq") ?? 0);
    this.sql.exec("delete from log where (seq <= ? or stored_at < ?) and seq <= ?", this.seq - replayMaxEvents, now - replayMaxAgeMs, undelivered);
    this.sql.exec("delete from log_part where seq < coalesce((select min(seq) from log), ?)", this.seq + 1);
    this.sql.exec("delete from seen where seq <= ? and at < ?", this.seq - Math.max(replayMaxEvents, DEDUPE_MIN_IDS), now - DEDUPE_MIN_AGE_MS);
  }

  private remember(channel: string): void {
    if (this.name === channel) return;
    this.name = channel;
    this.setMeta("name", channel);
  }
}

function member(a: SocketAttachment): PresenceMember {
  return { id: a.id, user: a.user, state: a.state ?? null };
}

/** A WebSocket tag for a user (tags are limited to 256 characters: long subjects are hashed). */
async function tagFor(user: string): Promise<string> {
  if (user.length <= 200) return `u:${user}`;
  return `u#${await sha256(user)}`;
}

/** The tag of the sockets sharing one filter: a hash of its JSON. */
async function tagForFilter(filter: string): Promise<string> {
  return `f:${(await sha256(filter)).slice(0, 32)}`;
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function send(ws: WebSocket, frame: ServerFrame): void {
  ws.send(JSON.stringify(frame));
}

function trySend(ws: WebSocket, text: string): void {
  try {
    ws.send(text);
  } catch {
    // A socket closing right now; its close handler will run.
  }
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
