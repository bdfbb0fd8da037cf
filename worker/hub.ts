/**
 * What every object holding browser sockets does, whether it is a channel's root (worker/channel.ts)
 * or one of its shards (worker/shard.ts): accept a socket with its limits, filter and presence
 * tags; send each batch of events once per distinct filter; enforce inbound size and rate limits;
 * keep presence from attachments. Subclasses decide what presence changes, broadcasts and leaves
 * mean beyond their own sockets.
 */
import { DurableObject } from "cloudflare:workers";
import type { ErrorCode, PresenceMember, RowFilter, ServerFrame } from "../protocol/index.ts";
import {
  broadcastFrame,
  EVENT_STREAM_TYPE,
  errorBody,
  eventsFrame,
  frameJson,
  jsonMembers,
  matchesEvent,
  PING,
  PONG,
  parseClientFrame,
  parseFilter,
  readData,
} from "../protocol/index.ts";
import { resolveWorkerConfig, type WorkerConfig } from "./config.ts";
import type { Env } from "./env.ts";
import { EventStreams } from "./event-streams.ts";
import type { Join } from "./join.ts";

/** Header the Worker sets on a forwarded upgrade: the channel's name. */
export const CHANNEL_NAME_HEADER = "X-Realtime-Channel";
/** Header the Worker sets on a forwarded upgrade: the verified token's `sub` (absent: anonymous). */
export const USER_HEADER = "X-Realtime-User";
/** Header the Worker sets on a forwarded upgrade when the token may broadcast on this channel. */
export const CAN_PUBLISH_HEADER = "X-Realtime-Can-Publish";
/** Header the Worker sets on an upgrade forwarded to a shard: its index. */
export const SHARD_HEADER = "X-Realtime-Shard";
/** Header on a shard's upgrade response: its open sockets (read and removed by the root). */
export const SHARD_SOCKETS_HEADER = "X-Realtime-Shard-Sockets";

/** Socket tags (at most 10 per socket, 256 characters each): fixed at accept time. */
export const TAG_UNFILTERED = "nf";
export const TAG_PRESENCE = "p";

/** Per-socket state that must survive hibernation (attachments are limited to 16 KiB). */
export interface SocketAttachment {
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

/** An event ready to send: its seq and its JSON text in a frame; filters read its data lazily. */
export interface Outgoing {
  seq: number;
  json: string;
  /** The data's JSON text, when known (otherwise it is read from `json` when a filter asks). */
  data?: string;
  /** The data as filters read it, once one asked (see filterData). */
  parsed?: unknown;
}

const DATA_MEMBER = new Set(["data"]);

/** An event's data as filters read it (big integers exact; undefined if unreadable), parsed once per event. */
export function filterData(e: Outgoing): unknown {
  if (!("parsed" in e)) e.parsed = readData(e.data ?? jsonMembers(e.json, DATA_MEMBER)?.get("data") ?? "null");
  return e.parsed;
}

/** `since`: the seq of the last event a client received. */
export const SINCE_PATTERN = /^\d{1,15}$/;
export const SINCE_RULE = "since must be a non-negative integer: the seq of the last event received";

/** What {@link SocketHub.admit} decided. */
export type Admission =
  | { ok: true; filter: RowFilter | null; filterText: string | null; user: string | null; userTag: string | null; wantsPresence: boolean }
  | { ok: false; code: ErrorCode; message: string };

/** True for a request for the channel's event stream (Server-Sent Events, as EventSource asks). */
export function wantsEventStream(request: Request): boolean {
  return request.headers.get("Accept")?.includes(EVENT_STREAM_TYPE) ?? false;
}

/** True for a WebSocket upgrade request. */
export function isUpgrade(request: Request): boolean {
  return request.headers.get("Upgrade")?.toLowerCase() === "websocket";
}

/** A socket just accepted by {@link SocketHub.accept}, or its refusal (a socket with the error frame, closing). */
export type Accepted =
  | {
      refused: false;
      server: WebSocket;
      response: Response;
      me: SocketAttachment;
      filter: RowFilter | null;
      /** The filter as the client sent it (for a shard to pass to the root), or null. */
      filterText: string | null;
    }
  | { refused: true; response: Response };

/**
 * A refused upgrade: a plain (not hibernatable) socket that carries the `error` frame and closes
 * right after it with 1008.
 */
export function refusal(code: ErrorCode, message: string): { refused: true; response: Response } {
  const { 0: client, 1: server } = new WebSocketPair();
  server.accept();
  server.send(frameJson({ type: "error", code, message }));
  server.close(1008, code);
  return { refused: true, response: new Response(null, { status: 101, webSocket: client }) };
}

export abstract class SocketHub extends DurableObject<Env> {
  protected readonly sql: SqlStorage;
  protected readonly config: WorkerConfig;
  /** Event streams (Server-Sent Events) held by this object; only a channel's root opens them. */
  protected readonly streams = new EventStreams();
  /** Filter tag -> filter, for every filter a socket joined with (kept in SQLite too). */
  protected readonly filters: Map<string, RowFilter>;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.config = resolveWorkerConfig(env);
    this.sql.exec("create table if not exists filters (tag text primary key, filter text not null)");
    // Kept as the text the client sent: a filter may hold bigints, which JSON.stringify refuses.
    this.filters = new Map();
    for (const r of this.sql.exec<{ tag: string; filter: string }>("select tag, filter from filters")) {
      const parsed = parseFilter(r.filter);
      if (parsed.ok) this.filters.set(r.tag, parsed.filter);
    }
    // Heartbeats never wake a hibernated object.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair(PING, PONG));
  }

  /** A member changed its presence state (already saved in its attachment). */
  protected abstract presenceChanged(ws: WebSocket, me: SocketAttachment): void;
  /** A member left (its leave not yet announced anywhere). */
  protected abstract memberLeft(ws: WebSocket, me: SocketAttachment): void;
  /** A client broadcast, already checked; `frame` is the text to send to the others. */
  protected abstract broadcastFrom(ws: WebSocket, me: SocketAttachment, frame: string): void;

  /**
   * Accepts an upgrade, or refuses it. The limits and the query are checked first, and a refusal is
   * a socket of its own, not a hibernatable one, that carries the error frame and closes at once (a
   * browser cannot read the body of a refused upgrade; and a hibernatable socket closed before its
   * upgrade response went out closed ~10 s late). An accepted socket gets its tags and attachment.
   */
  protected async accept(request: Request): Promise<Accepted> {
    const admitted = await this.admit(request);
    if (!admitted.ok) return refusal(admitted.code, admitted.message);
    const { filter, filterText, user, userTag, wantsPresence } = admitted;
    const filterTag = filter ? await tagForFilter(filterText!) : TAG_UNFILTERED;
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
    if (filter && !this.filters.has(filterTag)) {
      this.filters.set(filterTag, filter);
      this.sql.exec("insert into filters (tag, filter) values (?, ?) on conflict (tag) do nothing", filterTag, filterText!);
    }
    return { refused: false, server, response: new Response(null, { status: 101, webSocket: client }), me, filter, filterText };
  }

  /**
   * What a WebSocket and an event stream both have to pass to join: a valid filter and `since`, and
   * room under the channel's and the user's connection limits (an object's sockets and streams
   * count together).
   */
  protected async admit(request: Request): Promise<Admission> {
    const url = new URL(request.url);
    const filterText = url.searchParams.get("filter");
    const parsedFilter = filterText ? parseFilter(filterText) : null;
    const user = request.headers.get(USER_HEADER);
    const userTag = user === null ? null : await tagFor(user);
    const { limits } = this.config;
    const since = url.searchParams.get("since");
    if (parsedFilter && !parsedFilter.ok) return { ok: false, code: "invalid_filter", message: parsedFilter.message };
    if (since !== null && since !== "" && !SINCE_PATTERN.test(since)) return { ok: false, code: "invalid_query", message: SINCE_RULE };
    if (this.ctx.getWebSockets().length + this.streams.size >= limits.socketsPerChannel) {
      return { ok: false, code: "channel_full", message: `this channel has its maximum of ${limits.socketsPerChannel} connections (MAX_SOCKETS_PER_CHANNEL)` };
    }
    if (userTag && this.ctx.getWebSockets(userTag).length + this.streams.countOf(user) >= limits.connectionsPerUser) {
      return {
        ok: false,
        code: "too_many_connections",
        message: `at most ${limits.connectionsPerUser} connections per user on one channel (MAX_CONNECTIONS_PER_USER)`,
      };
    }
    const filter = parsedFilter?.ok ? parsedFilter.filter : null;
    return { ok: true, filter, filterText: filter ? filterText : null, user, userTag, wantsPresence: url.searchParams.get("presence") === "1" };
  }

  /** The answer of either object to a request that is not a WebSocket upgrade. */
  protected upgradeRequired(): Response {
    return Response.json(errorBody("upgrade_required", "expected a WebSocket upgrade"), { status: 426 });
  }

  /**
   * The join sequence of a socket just accepted: `welcome`, then the frames its join owes it
   * (replay, or reset and snapshot), all sent before anything live. A refused join gets its
   * `welcome` (at `at`, where the channel stands as far as this object knows) and the error frame,
   * and is closed. Returns whether the socket joined.
   */
  protected welcome(server: WebSocket, me: SocketAttachment, join: Join, at: { channel: string; epoch: string; seq: number }, shard?: number): boolean {
    if (!join.ok) {
      send(server, { type: "welcome", channel: at.channel, epoch: at.epoch, seq: at.seq, member: me.id });
      this.closeWith(server, me, join.code, join.message);
      return false;
    }
    send(server, { type: "welcome", channel: join.channel, epoch: join.epoch, seq: join.seq, member: me.id, ...(shard === undefined ? {} : { shard }) });
    for (const frame of join.frames) server.send(frame);
    return true;
  }

  /** Marks the socket as gone (no leave to announce), sends the error frame, closes. */
  protected closeWith(ws: WebSocket, me: SocketAttachment, code: ErrorCode, message: string): void {
    me.left = true;
    ws.serializeAttachment(me);
    this.refuse(ws, code, message);
  }

  /** Sends events to this object's sockets: one frame per filter, computed once; `skip` sockets get none. */
  protected deliverLocal(events: Outgoing[], skip?: (ws: WebSocket) => boolean): void {
    if (events.length === 0) return;
    this.streams.deliver(events);
    const all = eventsFrame(events.map((e) => e.json));
    for (const ws of this.ctx.getWebSockets(TAG_UNFILTERED)) if (!skip?.(ws)) trySend(ws, all);
    for (const [tag, filter] of this.filters) {
      const sockets = this.ctx.getWebSockets(tag).filter((ws) => !skip?.(ws));
      if (sockets.length === 0) continue;
      const matching = events.filter((e) => matchesEvent(filter, filterData(e)));
      if (matching.length === 0) continue;
      const frame = eventsFrame(matching.map((e) => e.json));
      for (const ws of sockets) trySend(ws, frame);
    }
  }

  /** Presence members among this object's sockets. */
  protected localMembers(except?: WebSocket): PresenceMember[] {
    return this.ctx
      .getWebSockets(TAG_PRESENCE)
      .filter((ws) => ws !== except)
      .map((ws) => ws.deserializeAttachment() as SocketAttachment)
      .filter((a) => a && !a.left)
      .map(member);
  }

  /** Sends a frame to this object's presence members (but `except`). */
  protected toLocalPresence(frame: string, except?: WebSocket): void {
    for (const ws of this.ctx.getWebSockets(TAG_PRESENCE)) if (ws !== except) trySend(ws, frame);
  }

  /** Sends a frame to every socket of this object (but `except`). */
  protected toAll(frame: string, except?: WebSocket): void {
    for (const ws of this.ctx.getWebSockets()) if (ws !== except) trySend(ws, frame);
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
    const parsed = parseClientFrame(typeof message === "string" ? message : "");
    const type = parsed.ok ? parsed.frame.type : parsed.type;
    if (type === "presence" && !me.presence) return send(ws, { type: "error", code: "invalid_frame", message: "join with presence=1 to set a presence state" });
    if (type === "broadcast" && !me.canPublish)
      return send(ws, { type: "error", code: "publish_forbidden", message: "the token's publish claim does not include this channel" });
    if (!parsed.ok) return send(ws, { type: "error", code: parsed.code, message: parsed.message });
    const frame = parsed.frame;
    if (frame.type === "presence") {
      me.state = frame.state;
      ws.serializeAttachment(me);
      return this.presenceChanged(ws, me);
    }
    this.broadcastFrom(ws, me, broadcastFrame(frame.event, frame.data, me));
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
    if (me.presence) this.memberLeft(ws, me);
  }

  protected refuse(ws: WebSocket, code: ErrorCode, message: string, closeCode = 1008): void {
    send(ws, { type: "error", code, message });
    ws.close(closeCode, code);
  }
}

export function member(a: SocketAttachment): PresenceMember {
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

/** Sends a frame that carries no event data (events and snapshots are built as text: protocol/frames.ts). */
export function send(ws: WebSocket, frame: Exclude<ServerFrame, { type: "events" | "snapshot" }>): void {
  ws.send(frameJson(frame));
}

export function trySend(ws: WebSocket, text: string): void {
  try {
    ws.send(text);
  } catch {
    // A socket closing right now; its close handler will run.
  }
}
