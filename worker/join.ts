/**
 * What a socket is owed when it joins, after its `welcome`: the shapes of that answer, read from the
 * socket's URL, and the replay of the events it missed as frames.
 */
import type { ErrorCode, RowFilter } from "../protocol/index.ts";
import { eventsFrame, matchesEvent } from "../protocol/index.ts";
import { filterData, type Outgoing } from "./hub.ts";

/** Replay is sent in frames of at most this many events, so one frame stays small. */
export const REPLAY_FRAME_EVENTS = 500;

/** What a joining socket asks for in its URL: `since` and `epoch` to resume, `snapshot=1` for the retained rows even before there are any. */
export interface JoinQuery {
  since: string | null;
  epoch: string | null;
  snapshot: boolean;
}

/** The join parameters of a socket's URL. */
export function joinQuery(url: URL): JoinQuery {
  return { since: url.searchParams.get("since"), epoch: url.searchParams.get("epoch"), snapshot: url.searchParams.get("snapshot") === "1" };
}

/** What a socket is sent after `welcome` when it joins: replay, or a reset, or a snapshot; or why it cannot join. */
export type Join = { ok: true; channel: string; epoch: string; seq: number; frames: string[] } | { ok: false; code: ErrorCode; message: string };

/** One socket joining a shard, as the shard asks its root what the socket is owed. */
export interface SyncRequest {
  query: JoinQuery;
  filterText: string | null;
}

/**
 * The root's answer to a shard's coalesced syncs: one join per request, in order, each `frames`
 * an index into `frameSets`, so a replay shared by many resuming sockets crosses the RPC once.
 */
export interface SyncAnswer {
  joins: (Extract<Join, { ok: false }> | (Omit<Extract<Join, { ok: true }>, "frames"> & { frames: number }))[];
  frameSets: string[][];
}

/** `joins` as one {@link SyncAnswer}: frame lists that are the same array (a shared replay) are sent once. */
export function packJoins(joins: readonly Join[]): SyncAnswer {
  const index = new Map<string[], number>();
  const frameSets: string[][] = [];
  const packed = joins.map((j) => {
    if (!j.ok) return j;
    let i = index.get(j.frames);
    if (i === undefined) {
      i = frameSets.push(j.frames) - 1;
      index.set(j.frames, i);
    }
    return { ...j, frames: i };
  });
  return { joins: packed, frameSets };
}

/** The joins of a {@link SyncAnswer}. */
export function unpackJoins(answer: SyncAnswer): Join[] {
  return answer.joins.map((j) => (j.ok ? { ...j, frames: answer.frameSets[j.frames]! } : j));
}

/** `events` (in seq order) as replay frames, the ones `filter` passes, REPLAY_FRAME_EVENTS to a frame. */
export function replayFrames(events: readonly Outgoing[], filter: RowFilter | null): string[] {
  const frames: string[] = [];
  let batch: string[] = [];
  for (const e of events) {
    if (filter && !matchesEvent(filter, filterData(e))) continue;
    batch.push(e.json);
    if (batch.length === REPLAY_FRAME_EVENTS) {
      frames.push(eventsFrame(batch));
      batch = [];
    }
  }
  if (batch.length > 0) frames.push(eventsFrame(batch));
  return frames;
}

/** Replays kept at most, and the most event JSON one may hold to be kept. */
const SHARED_REPLAYS = 16;
const SHARED_REPLAY_UNITS = 8 * 1024 * 1024;

/**
 * Replay frames shared by the sockets that resume from the same seq with the same filter while
 * the channel stands still: after a deploy cuts every socket, clients come back with the few
 * positions they had reached, and each replay is built (read from the log, filtered, framed)
 * once, not once per socket. Everything is dropped as soon as the channel moves (a new seq or
 * epoch). In memory only: a woken object builds afresh.
 */
export class SharedReplays {
  private position = "";
  private readonly replays = new Map<string, string[]>();
  /** Replays built, and replays served from one already built, since this object woke. */
  built = 0;
  shared = 0;

  /** The frames for (`since`, `filterKey`) at channel position `position`, built by `build` unless already built. */
  get(position: string, since: number, filterKey: string, build: () => string[]): string[] {
    if (position !== this.position) {
      this.replays.clear();
      this.position = position;
    }
    const key = `${since}|${filterKey}`;
    const hit = this.replays.get(key);
    if (hit) {
      this.shared++;
      return hit;
    }
    const frames = build();
    this.built++;
    if (this.replays.size >= SHARED_REPLAYS) this.replays.delete(this.replays.keys().next().value!);
    if (frames.reduce((n, f) => n + f.length, 0) <= SHARED_REPLAY_UNITS) this.replays.set(key, frames);
    return frames;
  }
}
