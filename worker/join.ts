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
