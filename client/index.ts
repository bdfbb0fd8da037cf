/**
 * The browser (and Node) client: partysocket plus automatic resume and typed events.
 *
 * partysocket reconnects but does not replay what the server sent meanwhile. This client remembers
 * the last `seq` and the channel's `epoch` and sends them as `since`/`epoch` on every reconnect
 * (partysocket evaluates a `query` function per connection), so the Channel replays exactly what
 * was missed, or answers `reset` when it cannot.
 */
import PartySocket, { type PartySocketOptions } from "partysocket";
import type { ChannelEvent, ClientFrame, ErrorCode, NumberMode, PresenceMember, ResetReason, RowFilter, SnapshotRow } from "../protocol/index.ts";
import { clientFrameJson, PING, parseServerFrame } from "../protocol/index.ts";

export type {
  ChangeEvent,
  ChannelEvent,
  EventMarker,
  MarkerReason,
  OversizedEvent,
  PresenceMember,
  ResetReason,
  RowFilter,
  RowRef,
  ServerFrame,
  SnapshotRow,
} from "../protocol/index.ts";
export { isMarker } from "../protocol/index.ts";

/**
 * How numbers that a JS number cannot hold exactly arrive (integers past ±2^53, more than 15
 * significant digits, beyond a double's range), everywhere in event data, snapshots and broadcasts:
 * - `"exact"` (default): as strings, digit for digit (`"9007199254740993"`); every other number is a number;
 * - `"bigint"`: integers as bigint (`9007199254740993n`), other such numbers as strings;
 * - `"number"`: JSON.parse's rounding (`9007199254740992`): the fastest, lossy for those values.
 */
export type Numbers = "exact" | "bigint" | "number";

/** Connection status reported to `onStatus`. */
export type Status = "connecting" | "open" | "closed";

/** An event of an `Events` map: `{ insert: ChangeEvent<Todo> }` gives `ChannelEvent<"insert", ChangeEvent<Todo>>`. */
export type TypedEvent<Events extends Record<string, unknown>> = {
  [K in keyof Events & string]: ChannelEvent<K, Events[K]>;
}[keyof Events & string];

/** Options of {@link subscribe}. */
export interface SubscribeOptions<Events extends Record<string, unknown> = Record<string, unknown>> {
  /** The Worker's host (`realtime.example.com`, `127.0.0.1:8787`); a scheme is optional. */
  host: string;
  /** Channel to join. */
  channel: string;
  /** Token for private channels; a function is called on every (re)connect, so it can renew. Default none. */
  token?: string | (() => string | Promise<string>);
  /** Every batch of new events, in seq order, each exactly once. */
  onEvents?: (events: TypedEvent<Events>[]) => void;
  /** One call per event, by name (after `onEvents`). */
  on?: { [K in keyof Events & string]?: (data: Events[K], event: ChannelEvent<K, Events[K]>) => void };
  /**
   * The events missed while disconnected cannot be replayed (`gap`: older than the replay log;
   * `epoch`: the channel's history was replaced). Reload your state, then keep applying events.
   */
  onReset?: (info: { reason: ResetReason; seq: number; epoch: string }) => void;
  /** Connection status changes; `open` once the server's welcome arrived. */
  onStatus?: (status: Status) => void;
  /** `error` frames from the server (a refused query, an unsupported message). */
  onError?: (error: { code: ErrorCode; message: string }) => void;
  /** Resume from here instead of live-only (for example a seq saved across page loads). Default none. */
  since?: { seq: number; epoch: string };
  /**
   * How numbers a JS number cannot hold exactly arrive: `"exact"` (strings, digit for digit),
   * `"bigint"`, or `"number"` (rounded). Default `"exact"`: a 64-bit id or a money column must not
   * change on its way (see {@link Numbers}).
   */
  numbers?: Numbers;
  /**
   * Ask for the channel's retained rows (a `snapshot` frame) even while it has none yet, so an empty
   * retained state arrives as `rows: []` instead of nothing. Default: true when `onSnapshot` is set.
   */
  snapshot?: boolean;
  /** WebSocket constructor, for Node < 22 (`import WebSocket from "ws"`). Default: the global one. */
  WebSocket?: unknown;
  /** Send a heartbeat every this many ms (0: never). Answered by the edge without waking the channel. Default 30000. */
  heartbeatMs?: number;
  /** More partysocket options (reconnect delays, `maxRetries`, ...). Default: partysocket's. */
  socket?: Omit<PartySocketOptions, "host" | "room" | "query" | "WebSocket">;
  /**
   * Only rows matching these conditions (ANDed), for events, replay and snapshot alike:
   * `{ done: { eq: false }, priority: { gte: 3 }, id: { in: [1, 2] } }`. Default: everything.
   */
  filter?: RowFilter;
  /**
   * The channel's retained rows (watches with `retain => true`), on first connect and after a
   * reset: replace your state with them; events after `seq` follow. `overflow` means the channel
   * no longer retains (its limits were passed): load the rows from your app instead.
   */
  onSnapshot?: (snapshot: { rows: SnapshotRow[]; seq: number; overflow: boolean }) => void;
  /** Join the channel's presence (listed, and told who else is here). Default: not listed. */
  presence?: {
    /** This connection's state, shown to the others (at most 1 KiB of JSON). Default null. */
    state?: unknown;
    /** The members, after every join, leave or state change. */
    onChange?: (members: PresenceMember[]) => void;
  };
  /** `broadcast` messages from other clients of the channel. */
  onBroadcast?: (message: { event: string; data: unknown; from: { id: string; user: string | null } }) => void;
}

/** A live subscription. */
export interface Subscription {
  /** Seq of the last event delivered (0 before any). */
  readonly seq: number;
  /** The channel's epoch, once welcomed. */
  readonly epoch: string | null;
  readonly status: Status;
  /** The underlying partysocket. */
  readonly socket: PartySocket;
  /** This connection's presence id (changes on every reconnect), once welcomed. */
  readonly member: string | null;
  /** Presence members, when joined with `presence`. */
  readonly members: PresenceMember[];
  /** Sets this connection's presence state (kept across reconnects). */
  setPresence(state: unknown): void;
  /** Sends an ephemeral message to the channel's other sockets (the token's `publish` claim must allow it). */
  broadcast(event: string, data?: unknown): void;
  /** Closes for good (no reconnect). */
  close(): void;
}

/** A filter's JSON, bigints written as the integers they are (JSON.stringify refuses them). */
function filterJson(filter: RowFilter): string {
  return JSON.stringify(filter, (_, v: unknown) => (typeof v === "bigint" ? `\u0000${v}` : v)).replace(/"\\u0000(-?[0-9]+)"/g, "$1");
}

/** Joins a channel; events, resets and status arrive through the callbacks. */
export function subscribe<Events extends Record<string, unknown> = Record<string, unknown>>(options: SubscribeOptions<Events>): Subscription {
  let seq = options.since?.seq ?? 0;
  let epoch: string | null = options.since?.epoch ?? null;
  let status: Status = "connecting";
  let heartbeat: ReturnType<typeof setInterval> | null = null;
  let member: string | null = null;
  let presenceState: unknown = options.presence?.state ?? null;
  const members = new Map<string, PresenceMember>();
  const sendFrame = (frame: ClientFrame) => {
    if (socket.readyState === 1) socket.send(clientFrameJson(frame));
  };
  const membersChanged = () => options.presence?.onChange?.([...members.values()]);
  const mode = options.numbers ?? "exact";
  const numberMode: NumberMode = mode === "exact" ? "string" : mode;
  const wantsSnapshot = options.snapshot ?? options.onSnapshot !== undefined;

  const setStatus = (next: Status) => {
    if (next === status) return;
    status = next;
    options.onStatus?.(next);
  };

  const socket = new PartySocket({
    ...options.socket,
    host: options.host,
    room: options.channel,
    WebSocket: options.WebSocket,
    // Evaluated on every (re)connect: resume from what this client has actually seen.
    query: async () => {
      const q: Record<string, string | null> = {};
      if (epoch !== null) {
        q.since = String(seq);
        q.epoch = epoch;
      }
      if (options.token) q.token = typeof options.token === "function" ? await options.token() : options.token;
      if (options.filter) q.filter = filterJson(options.filter);
      if (options.presence) q.presence = "1";
      if (wantsSnapshot) q.snapshot = "1";
      return q;
    },
  });

  socket.addEventListener("open", () => {
    const every = options.heartbeatMs ?? 30_000;
    if (every > 0 && !heartbeat) heartbeat = setInterval(() => socket.readyState === 1 && socket.send(PING), every);
  });
  socket.addEventListener("close", () => {
    if (heartbeat) clearInterval(heartbeat);
    heartbeat = null;
    if (status !== "closed") setStatus("connecting");
  });
  socket.addEventListener("message", (message: MessageEvent) => {
    if (typeof message.data !== "string") return;
    const frame = parseServerFrame(message.data, numberMode);
    if (frame === null) return;
    switch (frame.type) {
      case "welcome":
        // A fresh client starts live from the welcome seq; a resuming one keeps its own
        // (the replay that follows brings it up to date, or a reset moves it).
        if (epoch === null) {
          epoch = frame.epoch;
          seq = frame.seq;
        }
        member = frame.member ?? null;
        // A new connection is a new member: the server sends the full list next.
        if (options.presence && presenceState !== null) sendFrame({ type: "presence", state: presenceState });
        setStatus("open");
        break;
      case "snapshot":
        seq = Math.max(seq, frame.seq);
        options.onSnapshot?.({ rows: frame.rows, seq: frame.seq, overflow: frame.overflow ?? false });
        break;
      case "presence":
        members.clear();
        for (const m of frame.members) members.set(m.id, m);
        membersChanged();
        break;
      case "presence_diff":
        for (const m of frame.leaves) members.delete(m.id);
        for (const m of frame.joins) members.set(m.id, m); // a join of a known id is a state change
        membersChanged();
        break;
      case "broadcast":
        options.onBroadcast?.({ event: frame.event, data: frame.data, from: frame.from });
        break;
      case "events": {
        // Drop anything already delivered: exactly once, in order, even across reconnects.
        const fresh = frame.events.filter((e) => e.seq > seq) as TypedEvent<Events>[];
        if (fresh.length === 0) break;
        seq = fresh[fresh.length - 1]!.seq;
        options.onEvents?.(fresh);
        if (options.on) {
          for (const e of fresh) (options.on[e.event] as ((d: unknown, e: unknown) => void) | undefined)?.(e.data, e);
        }
        break;
      }
      case "reset":
        epoch = frame.epoch;
        seq = frame.seq;
        options.onReset?.({ reason: frame.reason, seq: frame.seq, epoch: frame.epoch });
        break;
      case "error":
        options.onError?.({ code: frame.code, message: frame.message });
        break;
    }
  });

  return {
    get seq() {
      return seq;
    },
    get epoch() {
      return epoch;
    },
    get status() {
      return status;
    },
    socket,
    get member() {
      return member;
    },
    get members() {
      return [...members.values()];
    },
    setPresence(state: unknown) {
      presenceState = state;
      sendFrame({ type: "presence", state });
    },
    broadcast(event: string, data: unknown = null) {
      sendFrame({ type: "broadcast", event, data });
    },
    close() {
      setStatus("closed");
      if (heartbeat) clearInterval(heartbeat);
      socket.close();
    },
  };
}
