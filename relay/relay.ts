/**
 * The relay: one process's work. It supervises database sessions (a lost connection ends one and
 * a new one starts after a backoff), leads through a Postgres advisory lock (one leader per cursor
 * name; relay/leader.ts), and while leading runs its sources (relay/sources/) and housekeeping on
 * the session, each delivering through one path to the Worker. It stops by itself only when the
 * Worker refuses its configuration, since no retry can help then.
 */
import { EventEmitter } from "node:events";
import { backoffDelay, sleep } from "./backoff.ts";
import { KnownChannels } from "./channels.ts";
import type { RelayOptions, ResolvedRelayOptions } from "./config.ts";
import type { BatchInfo, RelayEvents } from "./events.ts";
import { Housekeeping } from "./housekeeping.ts";
import { IngestClient, IngestConfigError, type OutgoingEvent, StoppedError } from "./ingest-client.ts";
import { acquireLead } from "./leader.ts";
import { createLogger, type Logger, redactUrl } from "./log.ts";
import { resolveRelayOptions } from "./options.ts";
import { Session } from "./session.ts";
import { NotifySource } from "./sources/notify.ts";
import { OutboxSource } from "./sources/outbox.ts";
import { type SlotHealth, SlotSource } from "./sources/slot.ts";
import type { Source, SourceContext } from "./sources/source.ts";

export type { BatchInfo, RelayEvents } from "./events.ts";
export { DOORBELL_CHANNEL } from "./session.ts";

/** Extra dependencies, for tests and embedding. */
export interface RelayDeps {
  logger?: Logger;
}

/** One relay process's work. `start()` returns at once; `stop()` drains and resolves. */
export class Relay extends EventEmitter<RelayEvents> {
  readonly options: ResolvedRelayOptions;
  private readonly log: Logger;
  private readonly ingest: IngestClient;
  private readonly stopController = new AbortController();
  private running: Promise<void> | null = null;
  private session: Session | null = null;
  private connected = false;
  /** Why the relay stopped by itself (see the `failed` event), or null. */
  private failure: Error | null = null;
  private readonly channels = new KnownChannels();
  private readonly outbox: OutboxSource;
  /** The wal or publication source; null for an outbox relay. */
  private readonly slot: SlotSource | null;
  /** What runs while leading, in this order. */
  private readonly sources: Source[];
  /** What the sources (and leadership) are given. */
  private readonly context: SourceContext;

  constructor(options: RelayOptions, deps: RelayDeps = {}) {
    super();
    this.options = resolveRelayOptions(options);
    this.log = deps.logger ?? createLogger(this.options.logLevel);
    this.ingest = new IngestClient({
      workerUrl: this.options.workerUrl,
      secret: this.options.ingestSecret,
      requestTimeoutMs: this.options.requestTimeoutMs,
      retryBaseMs: this.options.retryBaseMs,
      retryMaxMs: this.options.retryMaxMs,
      maxEventBytes: this.options.maxEventBytes,
      onRetry: (info) => {
        this.log.warn("ingest failed, retrying", { attempt: info.attempt, delayMs: info.delayMs, error: info.error.message });
        this.emit("retry", info);
      },
    });
    this.context = {
      options: this.options,
      cursorName: this.cursorName,
      log: this.log,
      emit: this.emit.bind(this),
      signal: this.stopController.signal,
      deliver: (source, events) => this.deliver(source, events),
      post: (events) => this.ingest.deliver(events, this.stopController.signal),
    };
    this.outbox = new OutboxSource(this.context);
    this.slot = this.options.source === "outbox" ? null : new SlotSource(this.context);
    // The outbox source runs in every mode: a slot relay ships the rows written before capture was switched.
    this.sources = [this.outbox, new NotifySource(this.context), new Housekeeping(this.context), ...(this.slot ? [this.slot] : [])];
  }

  /** Why the relay stopped by itself (the Worker refuses its configuration), or null while it runs or was stopped. */
  get failed(): Error | null {
    return this.failure;
  }

  /** True while this relay holds the leader lock. */
  get isLeader(): boolean {
    return this.session?.leader ?? false;
  }

  /** True while a database session is established (leading or standing by). */
  get isConnected(): boolean {
    return this.connected;
  }

  /** xmin of the last acknowledged snapshot (every transaction below it is delivered), once known. */
  get cursorXmin(): number | null {
    return this.outbox.cursorXmin;
  }

  /** The cursor, leader-lock and doorbell name: RELAY_NAME, plus the partition when partitioned. */
  get cursorName(): string {
    const p = this.options.partition;
    return p ? `${this.options.name}:p${p.index}of${p.count}` : this.options.name;
  }

  /**
   * Age in seconds of the oldest committed outbox event not yet acknowledged (0 when caught up),
   * for the leader; null otherwise. Runs on the listener connection, never delaying delivery.
   */
  async backlog(): Promise<{ oldestSeconds: number } | null> {
    const session = this.leaderSession();
    return session ? this.outbox.backlog(session) : null;
  }

  /**
   * Bytes of WAL the wal source's slot still holds (the server's position minus the slot's
   * confirmed one: 0 when caught up), for the leader of a wal relay; null otherwise.
   */
  async walLag(): Promise<{ bytes: number } | null> {
    const session = this.leaderSession();
    return session && this.slot ? this.slot.lag(session) : null;
  }

  /**
   * The slot-reading source's replication slot as Postgres reports it (pg_replication_slots), for
   * the leader; null otherwise: WAL it keeps (`retainedBytes`, from restart_lsn), WAL not yet
   * acknowledged (`lagBytes`, from confirmed_flush_lsn), `walStatus` (reserved, extended,
   * unreserved: at risk; lost: invalidated) and `safeWalSize` (bytes it may still fall behind
   * before max_slot_wal_keep_size invalidates it; null when that is unlimited).
   */
  async slotHealth(): Promise<SlotHealth | null> {
    const session = this.leaderSession();
    return session && this.slot ? this.slot.health(session) : null;
  }

  /** Starts connecting and working in the background. */
  start(): void {
    if (this.running) return;
    this.log.info("relay starting", {
      name: this.options.name,
      database: redactUrl(this.options.databaseUrl),
      worker: this.options.workerUrl,
      notify: this.options.notify.map((r) => `${r.pgChannel}=${r.channel}`),
    });
    this.running = this.supervise();
  }

  /** Stops: finishes (or abandons, unacknowledged) the batch in flight, releases the lock, closes connections. */
  async stop(): Promise<void> {
    this.stopController.abort();
    this.session?.wake();
    await this.running;
    this.running = null;
    this.emit("stopped");
  }

  private get stopping(): boolean {
    return this.stopController.signal.aborted;
  }

  /** The session, while it leads and is open: what the metrics queries run on. */
  private leaderSession(): Session | null {
    const session = this.session;
    return session?.leader && !session.closed ? session : null;
  }

  /** Runs sessions until stopped; a lost connection ends a session and a new one starts after a backoff. */
  private async supervise(): Promise<void> {
    for (let attempt = 1; !this.stopping; attempt++) {
      const session = new Session(this.options);
      this.session = session;
      try {
        await session.connect();
        attempt = 0;
        this.connected = true;
        this.emit("connected");
        await this.lead(session);
      } catch (err) {
        if (this.stopping && (err instanceof StoppedError || session.closed)) break;
        if (err instanceof IngestConfigError) {
          // Retrying cannot help: say what to fix and stop, so a supervisor shows the failure.
          this.log.error("the Worker refuses this relay; stopping", { error: err.message });
          this.failure = err;
          this.stopController.abort();
          this.emit("failed", err);
          break;
        }
        const error = err as Error;
        this.log.warn("database session ended, reconnecting", { error: error.message });
        this.emit("disconnected", error);
        await sleep(backoffDelay(Math.max(attempt, 1), this.options.retryBaseMs, this.options.retryMaxMs), this.stopController.signal);
      } finally {
        this.connected = false;
        await session.close();
        this.session = null;
      }
    }
  }

  /** Waits for the leader lock, then runs every source on the session until one fails or the relay stops. */
  private async lead(session: Session): Promise<void> {
    if (!(await acquireLead(session, this.context))) return;
    // Every channel is heard before any source runs: a doorbell rung once the outbox source says it waits is never missed.
    const listens = this.sources.flatMap((s) => s.listens ?? []);
    await session.listen(listens, (channel, payload) => {
      for (const source of this.sources) if (source.listens?.includes(channel)) source.onNotification?.(session, channel, payload);
    });
    // One source failing ends the session; the others see it closed and stop too.
    await Promise.all(this.sources.map((s) => s.run(session))).catch(async (err) => {
      await session.close();
      throw err;
    });
  }

  /**
   * Delivers one batch of `source` (see IngestClient.deliver): what the Worker refused, alone, is
   * logged with its source id and emitted, and the batch's figures come back for the caller's log.
   */
  private async deliver(source: BatchInfo["source"], events: OutgoingEvent[]): Promise<BatchInfo> {
    const started = performance.now();
    const delivery = await this.ingest.deliver(events, this.stopController.signal);
    await this.channels.remember(
      this.session,
      events.map((e) => e.channel),
    );
    for (const refused of delivery.refused) {
      this.log.error("the Worker refused an event; skipped so that the others go on", { ...refused, source });
      this.emit("refused", refused);
    }
    const { accepted, duplicates, markers } = delivery;
    return { source, events: events.length, accepted, duplicates, markers, refused: delivery.refused.length, ms: performance.now() - started };
  }
}
