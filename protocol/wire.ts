/** Wire types and limits: frames, ingest bodies, names. */

/** Header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. */
export const SIGNATURE_HEADER = "X-Realtime-Signature";

/** How far a signature's timestamp may be from the Worker's clock, in seconds. */
export const SIGNATURE_TOLERANCE_SECONDS = 300;

/**
 * Channel names: what `realtime.watch` templates and `realtime.publish` may produce, what a
 * browser may join. The same rule is enforced by a check constraint on `realtime.outbox`
 * (sql/realtime.sql), so a bad name fails the writer's statement instead of poisoning the relay.
 * Every allowed character is safe in a URL path segment, which partysocket does not encode.
 */
export const CHANNEL_PATTERN = /^[A-Za-z0-9_.:@-]{1,128}$/;

/** Event names (`insert`, `update`, `delete`, `notify`, or what `realtime.publish` was given). */
export const EVENT_NAME_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

/**
 * Shortest JWT_SECRET the Worker, the token minter and the CLI accept: an HS256 key shorter than
 * the hash's 32 bytes is weaker than the signature it makes.
 */
export const MIN_JWT_SECRET_LENGTH = 32;

/** Largest number of events one ingest request may carry. */
export const MAX_INGEST_EVENTS = 1000;

/** Longest event id (outbox ids are `<install id>-<bigint>`, NOTIFY ids are UUIDs). */
export const MAX_EVENT_ID_LENGTH = 128;

/** Path prefix of a channel's WebSocket: partysocket's default `/parties/<party>/<room>`. */
export const CHANNEL_PATH_PREFIX = "/parties/main/";

/**
 * One event of a `POST /ingest` body. `data` is the JSON text of the event's data, exactly as the
 * producer wrote it: the body carries it inline (`"data":{...}`), and the edge keeps that text byte
 * for byte (protocol/json.ts says why).
 */
export interface IngestEvent {
  /** Unique source id; the channel drops an id it has already stored. */
  id: string;
  /** Destination channel. */
  channel: string;
  /** Event name. */
  event: string;
  /** The data's JSON text (any JSON value; `null` for none). */
  data: string;
  /** When the event was written at the source, in milliseconds since the Unix epoch. */
  ts: number;
  /** The channel keeps this change event's row as retained state (`realtime.watch(..., retain => true)`). */
  retain?: boolean;
  /**
   * Not an event but a notice that events of this channel were lost at the source (the relay's
   * replication slot was invalidated): the channel starts a new epoch, with an empty log and no
   * retained rows, and every client resets. `data` says why; its id is deduplicated as any.
   */
  reset?: boolean;
}

/** Body of `POST /ingest`. */
export interface IngestBody {
  events: IngestEvent[];
}

/** 200 answer of `POST /ingest`: every event is stored in its channel's log. */
export interface IngestResult {
  /** Events new to their channel, now sequenced and sent. */
  accepted: number;
  /** Events whose id the channel had already stored (a re-sent batch), dropped. */
  duplicates: number;
  /**
   * Of the accepted events, those stored as a marker instead of their data (see
   * {@link EventMarker}): a retained row too large to keep, or an event the channel could not store.
   * Absent when none.
   */
  markers?: number;
}

/** Stable error codes in `{ error: { code, message } }` bodies and `error` frames. */
export type ErrorCode =
  | "signature_missing"
  | "signature_malformed"
  | "signature_expired"
  | "signature_mismatch"
  | "malformed_json"
  | "invalid_body"
  | "payload_too_large"
  | "invalid_channel"
  | "invalid_query"
  | "upgrade_required"
  | "unsupported_frame"
  | "not_found"
  | "not_configured"
  | "channel_unavailable"
  | "token_required"
  | "token_invalid"
  | "token_expired"
  | "token_not_yet_valid"
  | "token_issuer"
  | "token_audience"
  | "jwks_unavailable"
  | "channel_forbidden"
  | "origin_not_allowed"
  | "too_many_connections"
  | "channel_full"
  | "frame_too_large"
  | "rate_limited"
  | "invalid_filter"
  | "invalid_frame"
  | "publish_forbidden"
  | "state_overflow"
  | "internal";

/** JSON body of every non-2xx HTTP answer. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

/** An event as a subscriber receives it: the channel's `seq` added to what was ingested. */
export interface ChannelEvent<Name extends string = string, Data = unknown> {
  /** Position in the channel, 1, 2, 3, … without gaps within one epoch. */
  seq: number;
  id: string;
  event: Name;
  data: Data;
  ts: number;
}

/**
 * Why a resuming subscriber cannot be given what it missed:
 * - `epoch`: the channel's history is not the one the client saw (new epoch, or a `since`
 *   beyond the channel's last seq);
 * - `gap`: the events after `since` are older than the replay log keeps;
 * - `lost`: events were lost at the source (the relay's replication slot was invalidated): the
 *   channel started a new epoch, and its retained rows are captured again.
 * Either way the client reloads its state and continues from the `welcome` seq.
 */
export type ResetReason = "epoch" | "gap" | "lost";

/** Frames the server sends on a channel's WebSocket, keyed on `type`. */
export type ServerFrame =
  | { type: "welcome"; channel: string; epoch: string; seq: number; member?: string; shard?: number }
  | { type: "events"; events: ChannelEvent[] }
  | SnapshotFrame
  | { type: "reset"; reason: ResetReason; epoch: string; seq: number }
  | { type: "presence"; members: PresenceMember[] }
  | { type: "presence_diff"; joins: PresenceMember[]; leaves: PresenceMember[] }
  | { type: "broadcast"; event: string; data: unknown; from: { id: string; user: string | null } }
  | { type: "error"; code: ErrorCode; message: string };

/**
 * The retained rows of a channel (watches with `retain => true`), sent after `welcome` to a new
 * subscriber and after `reset`: the state as of `seq`; events after `seq` follow.
 */
export interface SnapshotFrame {
  type: "snapshot";
  seq: number;
  rows: SnapshotRow[];
  /** True when the channel's retained state outgrew its limits and is no longer kept: load rows from your app. */
  overflow?: boolean;
}

/** One retained row: the latest version of a row of a watched table. */
export interface SnapshotRow<Row = Record<string, unknown>> {
  schema: string;
  table: string;
  key: Record<string, unknown>;
  /** The row; null when it is too large to retain (`oversized`): fetch it from your app. */
  row: Row | null;
  /** Seq of the event that produced this version. */
  seq: number;
  /** The row exists but was too large to retain (`STATE_MAX_ROW_BYTES`, or the relay's `--max-event-bytes`); `row` is null. */
  oversized?: true;
}

/** A connection listed in a channel's presence. */
export interface PresenceMember {
  /** The connection's id (one user may hold several). */
  id: string;
  /** The token's subject, or null (anonymous, on a public channel). */
  user: string | null;
  /** What the client set with a `presence` message (at most 1 KiB of JSON), or null. */
  state: unknown;
}

/**
 * The answer of `GET /channels/<channel>/events?since=<seq>&epoch=<epoch>` (HTTP catch-up): the
 * events after `since` (at most `limit`, those `filter` passes), and where to go on from:
 * ask again with `since=next` while `more`. Without `since`, no events: the channel's position
 * (and its retained rows). When the events after `since` cannot be given (another epoch, or
 * older than the replay log), `reset` says why, as the WebSocket's `reset` frame does, and the
 * client reloads its state from `snapshot` (retaining channels) or its own source, then goes on
 * from `next`.
 */
export interface CatchUp<Data = unknown> {
  channel: string;
  epoch: string;
  /** The channel's latest seq when answered. */
  seq: number;
  events: ChannelEvent<string, Data>[];
  /** The seq to ask from next (the last event examined: with a filter, events it skipped count). */
  next: number;
  /** More events follow `next` already. */
  more: boolean;
  reset?: { reason: ResetReason };
  /** The retained rows, as the `snapshot` frame carries them (retaining channels, or `snapshot=1`). */
  snapshot?: SnapshotFrame;
}

/** Events one catch-up answer carries at most (and its default `limit`). */
export const MAX_CATCH_UP_EVENTS = 1000;

/** Messages a client may send (besides the `ping` heartbeat). */
export type ClientFrame = { type: "presence"; state: unknown } | { type: "broadcast"; event: string; data: unknown };

/** Largest presence state a client may set, in bytes of JSON. */
export const MAX_PRESENCE_STATE_BYTES = 1024;

/** Text a client may send; the runtime answers `pong` without waking the Durable Object. */
export const PING = "ping";
/** The auto-response to {@link PING}. */
export const PONG = "pong";

/** `op` of a change event produced by `realtime.watch`. */
export type ChangeOp = "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE";

/** `data` of a change event produced by `realtime.watch` (event names `insert`, `update`, `delete`, `truncate`). */
export interface ChangeEvent<Row = Record<string, unknown>> {
  op: ChangeOp;
  schema: string;
  table: string;
  /** Primary-key columns of the row (empty for TRUNCATE). */
  key: Partial<Row>;
  /** The row after the change (INSERT, UPDATE), else null. */
  new: Row | null;
  /** The row before the change (UPDATE, DELETE), else null. */
  old: Row | null;
}

/**
 * Why an event arrives as a marker instead of its data:
 * - `event_too_large`: its data was larger than the relay's `--max-event-bytes`, or than one ingest
 *   request may carry;
 * - `row_too_large`: on a retaining channel, its row was larger than `STATE_MAX_ROW_BYTES`;
 * - `unstorable`: the channel could not store it (logged by the Worker with its source id).
 */
export type MarkerReason = "event_too_large" | "row_too_large" | "unstorable";

/**
 * `data` that stands in for an event that could not be carried as it was written. The event still
 * arrives, in order, with what identifies its row, so a subscriber knows what changed and can fetch
 * it. Size markers carry `oversized: true`, the others `unstorable: true`; {@link isMarker} tells
 * either from ordinary data.
 */
export interface EventMarker {
  oversized?: true;
  unstorable?: true;
  reason: MarkerReason;
  /** Size of the event's JSON data, in bytes (UTF-8). */
  bytes: number;
  /** For change events: what is small enough to keep. */
  op?: ChangeOp;
  schema?: string;
  table?: string;
  key?: Record<string, unknown>;
}

/** The marker shape of 0.1 (`oversized: true`), kept as a name. */
export type OversizedEvent = EventMarker;

/** True when an event's data is a marker standing in for data that could not be carried. */
export function isMarker(data: unknown): data is EventMarker {
  if (typeof data !== "object" || data === null) return false;
  const d = data as Partial<EventMarker>;
  return (d.oversized === true || d.unstorable === true) && typeof d.reason === "string";
}

/** Builds the JSON error body; the one place that shapes it. */
export function errorBody(code: ErrorCode, message: string): ErrorBody {
  return { error: { code, message } };
}
