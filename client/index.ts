/**
 * The browser (and Node) client: partysocket plus automatic resume and typed events.
 *
 * partysocket reconnects but does not replay what the server sent meanwhile. This client remembers
 * the last `seq` and the channel's `epoch` and sends them as `since`/`epoch` on every reconnect
 * (partysocket evaluates a `query` function per connection), so the Channel replays exactly what
 * was missed, or answers `reset` when it cannot.
 *
 * Where WebSockets cannot connect (a proxy refusing upgrades), it reads the same channel as an
 * event stream instead (client/event-stream.ts): see the `transport` option.
 */
import PartySocket, { type PartySocketOptions } from "partysocket";
import type { ChannelEvent, ClientFrame, ErrorCode, NumberMode, PresenceMember, ResetReason, RowFilter, SnapshotRow } from "../protocol/index.ts";
import { clientFrameJson, PING, parseServerFrame } from "../protocol/index.ts";
import { channelHttpUrl, type EventSourceConstructor, EventStreamTransport } from "./event-stream.ts";

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
  /**
   * After the server or the network closes an open socket (a deploy closes every socket of every
   * channel at once), the first reconnect waits a random delay in [0, reconnectJitterMs) on top of
   * partysocket's own delay, so the clients of a deploy come back spread over the window instead
   * of all at the same moment; later attempts use partysocket's backoff alone. A close the app
   * asks for (`close()`, `socket.reconnect()`) is not delayed. 0 turns it off. Default 5000: an
   * object (a channel, or one of its shards) serves a deploy's reconnects as they come up to
   * about 1,750 sockets, for a wait of half the window on average; larger ones want a longer
   * window or more shards (docs/scale.md, "Deploy day").
   */
  reconnectJitterMs?: number;
  /**
   * How to reach the channel. `"auto"`: the WebSocket, and the channel's event stream (Server-Sent
   * Events) for the rest of the subscription once {@link SSE_AFTER_FAILURES} WebSocket attempts in
   * a row failed before ever opening (a network that refuses WebSockets), when an EventSource is
   * available. `"websocket"`: never the stream. `"sse"`: the stream from the start. Over the stream,
   * events, snapshots and resets arrive as over the socket; presence and broadcast do not (they
   * report an `unsupported_frame` error once). Default `"auto"`.
   */
  transport?: "auto" | "websocket" | "sse";
  /** EventSource constructor, for Node (e.g. from the `eventsource` package). Default: the global one. */
  EventSource?: unknown;
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

/** WebSocket attempts in a row that never opened after which `transport: "auto"` reads the event stream. */
export const SSE_AFTER_FAILURES = 3;

/** A live subscription. */
export interface Subscription {
  /** How the channel is read now: `"sse"` once the subscription fell back to (or started with) the event stream. */
  readonly transport: "websocket" | "sse";
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
    if (stream) {
      // One-way: said once, not per call.
      if (!toldNoUpstream)
        options.onError?.({ code: "unsupported_frame", message: "presence and broadcast need the WebSocket; this subscription reads the event stream" });
      toldNoUpstream = true;
      return;
    }
    if (socket.readyState === 1) socket.send(clientFrameJson(frame));
  };
  const membersChanged = () => options.presence?.onChange?.([...members.values()]);
  const mode = options.numbers ?? "exact";
  const numberMode: NumberMode = mode === "exact" ? "string" : mode;
  const wantsSnapshot = options.snapshot ?? options.onSnapshot !== undefined;
  const jitterMs = options.reconnectJitterMs ?? 5_000;
  // The socket opened since it last closed: only a close of an open socket is a server going away.
  let wasOpen = false;
  // The next connect waits its jitter first (set by a close the app did not ask for).
  let jitterNext = false;
  // The app's own socket.reconnect() is under way: the close it dispatches is asked for.
  let reconnecting = false;
  // The jitter wait under way: ending it lets the pending connect go on (or give up, once closed).
  let endJitter: (() => void) | null = null;
  const jitter = async (): Promise<void> => {
    if (!jitterNext) return;
    jitterNext = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => endJitter?.(), Math.random() * jitterMs);
      endJitter = () => {
        clearTimeout(timer);
        endJitter = null;
        resolve();
      };
    });
  };

  const setStatus = (next: Status) => {
    if (next === status) return;
    status = next;
    options.onStatus?.(next);
  };

  /** The query of a (re)connect: where this client stands, and what it asks for. */
  const joinParams = async (): Promise<Record<string, string | null>> => {
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
  };
  const transportChoice = options.transport ?? "auto";
  const EventSourceImpl = (options.EventSource ?? (globalThis as { EventSource?: unknown }).EventSource) as EventSourceConstructor | undefined;
  if (transportChoice === "sse" && !EventSourceImpl)
    throw new Error('transport "sse" needs an EventSource: pass one (EventSource option) where there is no global one');
  /** The event stream, once the subscription reads it. */
  let stream: EventStreamTransport | null = null;
  /** WebSocket attempts in a row that failed before opening, and whether one ever opened. */
  let failedOpens = 0;
  let everOpened = false;
  let toldNoUpstream = false;

  const socket = new PartySocket({
    ...options.socket,
    startClosed: transportChoice === "sse" || options.socket?.startClosed,
    host: options.host,
    room: options.channel,
    WebSocket: options.WebSocket,
    // Evaluated on every (re)connect, after partysocket's delay: resume from what this client has
    // actually seen. The jitter waits here, inside partysocket's connect, so its backoff, retry
    // count and connection timeout stay its own; the token is fetched once the wait is over.
    query: async () => {
      await jitter();
      const q: Record<string, string | null> = {};
      // Closed during the wait: partysocket gives up this connect once the URL is back.
      if (!socket.shouldReconnect) return q;
      return joinParams();
    },
  });

  // A reconnect the app asks for goes at once, as partysocket's own does: it is not a storm.
  const reconnect = socket.reconnect.bind(socket);
  socket.reconnect = (code?: number, reason?: string) => {
    reconnecting = true;
    try {
      reconnect(code, reason);
    } finally {
      reconnecting = false;
    }
    jitterNext = false;
    endJitter?.();
  };

  socket.addEventListener("open", () => {
    wasOpen = true;
    everOpened = true;
    failedOpens = 0;
    const every = options.heartbeatMs ?? 30_000;
    if (every > 0 && !heartbeat) heartbeat = setInterval(() => socket.readyState === 1 && socket.send(PING), every);
  });
  socket.addEventListener("close", () => {
    if (heartbeat) clearInterval(heartbeat);
    heartbeat = null;
    // An open socket closed by the server or the network, partysocket reconnecting: every other
    // client of a restarted server is reconnecting at this moment too (partysocket has already
    // scheduled this connect; its query waits the jitter).
    if (wasOpen && !reconnecting && socket.shouldReconnect && jitterMs > 0) jitterNext = true;
    if (!wasOpen && !reconnecting && socket.shouldReconnect) failedOpens++;
    wasOpen = false;
    if (status !== "closed") setStatus("connecting");
    if (transportChoice === "auto" && !stream && !everOpened && failedOpens >= SSE_AFTER_FAILURES && EventSourceImpl && status !== "closed") {
      // A network that refuses WebSockets: the event stream, for the rest of the subscription.
      socket.close();
      openStream();
    }
  });
  const openStream = () => {
    stream = new EventStreamTransport({
      url: async () => channelHttpUrl(options.host, options.channel, await joinParams()),
      EventSource: EventSourceImpl!,
      minDelayMs: 250,
      maxDelayMs: 10_000,
    });
    stream.addEventListener("message", (m) => onMessage(m as MessageEvent));
    stream.addEventListener("close", () => {
      if (status !== "closed") setStatus("connecting");
    });
  };
  const onMessage = (message: MessageEvent) => {
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
  };
  socket.addEventListener("message", onMessage);
  if (transportChoice === "sse") openStream();

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
    get transport() {
      return stream ? "sse" : "websocket";
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
      stream?.close();
      // No timer outlives the subscription: a pending jitter wait ends, and its connect gives up.
      jitterNext = false;
      endJitter?.();
    },
  };
}
