/**
 * The one interface every source of events runs behind (and housekeeping, which the relay runs the
 * same way): the relay builds each once, with a {@link SourceContext}, and calls `run` with the
 * session each time it takes the lead. Adding a source is one new file in this folder and one
 * line in relay.ts.
 */
import type { ResolvedRelayOptions } from "../config.ts";
import type { BatchInfo, Emit } from "../events.ts";
import type { Delivery, OutgoingEvent } from "../ingest-client.ts";
import type { Logger } from "../log.ts";
import type { Session } from "../session.ts";

/** What the relay gives each source. */
export interface SourceContext {
  readonly options: ResolvedRelayOptions;
  /** The cursor, leader-lock, doorbell and slot name: RELAY_NAME, plus the partition when partitioned. */
  readonly cursorName: string;
  readonly log: Logger;
  readonly emit: Emit;
  /** Aborts when the relay stops. */
  readonly signal: AbortSignal;
  /**
   * The delivery path of every batch: POSTs until acknowledged (see IngestClient.deliver), records
   * the channels delivered to, logs and emits what the Worker refused, and returns the batch's
   * figures. Throws StoppedError if the relay stops first.
   */
  deliver(source: BatchInfo["source"], events: OutgoingEvent[]): Promise<BatchInfo>;
  /** POSTs the relay's own notices (no channel bookkeeping, no batch figures). */
  post(events: OutgoingEvent[]): Promise<Delivery>;
}

/** A source of events (or housekeeping): runs while this relay leads. */
export interface Source {
  /** NOTIFY channels it needs heard; the relay LISTENs to them before any source runs. */
  readonly listens?: readonly string[];
  /** A notification on one of `listens`, heard by `session`. */
  onNotification?(session: Session, channel: string, payload: string): void;
  /**
   * Works on the leader's `session` until the relay stops or the session closes. Throwing ends the
   * session (the relay reconnects), and the other sources see it closed and return.
   */
  run(session: Session): Promise<void>;
}
