/** What a {@link Relay} tells its embedder: typed events, emitted by the relay and its sources. */
import type { EventEmitter } from "node:events";
import type { Unroutable } from "./changes.ts";
import type { IngestError, RefusedEvent } from "./ingest-client.ts";

/** What a delivered batch looked like. */
export interface BatchInfo {
  source: "outbox" | "wal" | "publication" | "notify";
  events: number;
  accepted: number;
  duplicates: number;
  /** Events that arrived as a marker instead of their data (too large, or unstorable at the channel). */
  markers: number;
  /** Events the Worker refused, alone, and that were skipped (each also logged and emitted as `refused`). */
  refused: number;
  ms: number;
}

/** Events a {@link Relay} emits. Background failures are events, never thrown. */
export interface RelayEvents {
  /** Connected to Postgres (again). */
  connected: [];
  /** Holds the leader lock; reading and sending. */
  leader: [];
  /** Another relay with the same name leads; waiting to take over. */
  standby: [];
  /** Lost the database connection; reconnecting. */
  disconnected: [error: Error];
  /** A batch was acknowledged by the Worker. */
  batch: [info: BatchInfo];
  /** A POST failed and will be retried. */
  retry: [info: { attempt: number; delayMs: number; error: IngestError }];
  /** A row change of a published table named no valid channel (a NULL or invalid template value); it was logged and not sent. */
  unroutable: [info: Unroutable];
  /** The Worker refused this event on its own; it was skipped so the others go on. */
  refused: [event: RefusedEvent];
  /** The replication slot had been invalidated: its events since then are lost; a new slot and a new epoch for every channel follow. */
  slotLost: [info: { slot: string; generation: string }];
  /** The relay cannot deliver until its configuration changes (the Worker refuses its secret or URL); it stopped. */
  failed: [error: Error];
  /** NOTIFY payloads were dropped because the queue was full (at-most-once path). */
  dropped: [info: { count: number }];
  /** The wal source streams its replication slot (capture goes to the WAL). */
  streaming: [info: { slot: string }];
  /** The outbox reader is idle and waits for the doorbell. */
  idle: [];
  /** A prune round finished: `rows` delivered rows older than the retention were deleted. */
  pruned: [info: { rows: number; statements: number }];
  /** stop() finished. */
  stopped: [];
}

/** Emits one of the relay's events: what sources get instead of the relay itself. */
export type Emit = EventEmitter<RelayEvents>["emit"];
