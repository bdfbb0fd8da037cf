/**
 * The relay: leads (one per cursor name, through a Postgres advisory lock), reads the outbox in
 * commit order, forwards plain NOTIFY channels, and POSTs signed batches to the Worker. The
 * cursor moves only after a 2xx, so a crash at any point re-sends at most the unacknowledged
 * batch, whose copies the channels drop as duplicates.
 */
import { EventEmitter } from "node:events";
import { createHash, randomUUID } from "node:crypto";
import pg from "pg";
import { isJson } from "../protocol/index.ts";
import { backoffDelay, sleep } from "./backoff.ts";
import { resolveRelayOptions, type RelayOptions, type ResolvedRelayOptions } from "./config.ts";
import { IngestClient, IngestConfigError, StoppedError, type Delivery, type IngestError, type OutgoingEvent, type RefusedEvent } from "./ingest-client.ts";
import { createLogger, redactUrl, type Logger } from "./log.ts";
import { advance, loadCursor, partitionSql, pruneDelivered, readPage, saveCursor, type Cursor, type Page } from "./outbox.ts";
import { SerialClient } from "./serial.ts";
import { toEvents, WatchRoutes, type ChangeEventText, type RowChange, type Unroutable } from "./changes.ts";
import { PgJsonError, TypeCatalog } from "./pgjson.ts";
import type { Relation } from "./pgoutput.ts";
import { ensureWalCapture, formatLsn, parseLsn, slotName, WalStream, type WalRecord } from "./wal.ts";

/** Channel the capture triggers NOTIFY when the relay is idle (sql/realtime.sql, realtime.ring). */
export const DOORBELL_CHANNEL = "realtime_doorbell";

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
  private notifyQueue: OutgoingEvent[] = [];
  private connected = false;
  /** The last cursor loaded or saved (acknowledged), for metrics. */
  private cursor: Cursor | null = null;
  /** The wal source's slot, once it streams. */
  private walSlot: string | null = null;
  /** Why the relay stopped by itself (see the `failed` event), or null. */
  private failure: Error | null = null;
  /** Channel names already in realtime.channels. */
  private readonly knownChannels = new Set<string>();

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
    return this.cursor ? Number(this.cursor.done.split(":")[0]) : null;
  }

  /**
   * Age in seconds of the oldest committed outbox event not yet acknowledged (0 when caught up),
   * for the leader; null otherwise. Runs on the listener connection, never delaying delivery.
   */
  async backlog(): Promise<{ oldestSeconds: number } | null> {
    const session = this.session;
    if (!session || !session.leader || !this.cursor || session.closed) return null;
    const p = this.options.partition;
    const { rows } = await session.listener.query<{ oldest: number | null }>(
      `select extract(epoch from now() - min(created_at))::float8 as oldest from (
         select created_at from realtime.outbox
         where (xid >= pg_snapshot_xmax($1::pg_snapshot) or xid in (select pg_snapshot_xip($1::pg_snapshot)))
           and ($2::int is null or ${partitionSql("hashtext(channel)", "$2::int")} = $3::int)
         order by xid limit 1) oldest`,
      [this.cursor.done, p?.count ?? null, p?.index ?? null],
    );
    return { oldestSeconds: Math.max(0, rows[0]?.oldest ?? 0) };
  }

  /**
   * Bytes of WAL the wal source's slot still holds (the server's position minus the slot's
   * confirmed one: 0 when caught up), for the leader of a wal relay; null otherwise.
   */
  async walLag(): Promise<{ bytes: number } | null> {
    const session = this.session;
    if (!session || !session.leader || !this.walSlot || session.closed) return null;
    const { rows } = await session.listener.query<{ bytes: string | null }>(
      "select (pg_current_wal_lsn() - confirmed_flush_lsn)::text as bytes from pg_replication_slots where slot_name = $1",
      [this.walSlot],
    );
    return rows[0]?.bytes == null ? null : { bytes: Math.max(0, Number(rows[0].bytes)) };
  }

  /**
   * The slot-reading source's replication slot as Postgres reports it (pg_replication_slots), for
   * the leader; null otherwise: WAL it keeps (`retainedBytes`, from restart_lsn), WAL not yet
   * acknowledged (`lagBytes`, from confirmed_flush_lsn), `walStatus` (reserved, extended,
   * unreserved: at risk; lost: invalidated) and `safeWalSize` (bytes it may still fall behind
   * before max_slot_wal_keep_size invalidates it; null when that is unlimited).
   */
  async slotHealth(): Promise<{ retainedBytes: number; lagBytes: number; walStatus: string | null; safeWalSize: number | null } | null> {
    const session = this.session;
    if (!session || !session.leader || !this.walSlot || session.closed) return null;
    const { rows } = await session.listener.query<{ retained: string | null; lag: string | null; wal_status: string | null; safe_wal_size: string | null }>(
      `select (pg_current_wal_lsn() - restart_lsn)::text as retained, (pg_current_wal_lsn() - confirmed_flush_lsn)::text as lag,
              wal_status, safe_wal_size::text as safe_wal_size
         from pg_replication_slots where slot_name = $1`,
      [this.walSlot],
    );
    const r = rows[0];
    if (!r) return null;
    const num = (v: string | null) => (v === null ? null : Math.max(0, Number(v)));
    return { retainedBytes: num(r.retained) ?? 0, lagBytes: num(r.lag) ?? 0, walStatus: r.wal_status, safeWalSize: r.safe_wal_size === null ? null : Number(r.safe_wal_size) };
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

  /** Waits for the leader lock, then runs the outbox loop and the NOTIFY forwarder. */
  private async lead(session: Session): Promise<void> {
    let announced = false;
    while (!(await session.tryLock(this.cursorName))) {
      if (!announced) {
        this.log.info("another relay leads; standing by", { name: this.cursorName });
        this.emit("standby");
        announced = true;
      }
      await session.waitFor(this.options.standbyPollMs, this.stopController.signal);
      if (this.stopping) return;
    }
    this.log.info("leading", { name: this.cursorName });
    this.emit("leader");
    // NOTIFY payloads have no id to deduplicate: of a partitioned set, only partition 0 forwards them.
    const forwards = !this.options.partition || this.options.partition.index === 0;
    await session.listen(forwards ? this.options.notify.map((r) => r.pgChannel) : [], (channel, payload) => this.onNotify(channel, payload));
    // Either loop failing ends the session; the other sees the closed session and stops too.
    // A wal relay still runs the outbox loop: it ships rows written before capture was switched.
    const loops = [this.outboxLoop(session), this.notifyLoop(session), this.pruneLoop(session)];
    if (this.options.source !== "outbox") loops.push(this.walLoop(session));
    await Promise.all(loops).catch(async (err) => {
      await session.close();
      throw err;
    });
  }

  private async outboxLoop(session: Session): Promise<void> {
    const { batchSize, batchBytes, pollIntervalMs, partition } = this.options;
    const name = this.cursorName;
    const db = session.query;
    const installId = await session.installId();
    if (this.options.source === "outbox") {
      const { rows } = await db.query<{ capture: string }>("select capture from realtime.installation");
      const capture = rows[0]?.capture;
      if (capture && capture !== "outbox") {
        // Changes now go to the WAL, which no outbox relay reads: they wait in the slot.
        this.log.warn("this relay reads the outbox, but capture is not 'outbox': changes captured since wait in the replication slot for a relay started with that source", {
          capture,
          fix: `start the relay with --source ${capture}, or switch back: select realtime.set_capture('outbox') (then drop the slot once it shipped everything)`,
        });
      }
    }
    let cursor: Cursor = await loadCursor(db, name, partition);
    this.cursor = cursor;
    // Whether our row of realtime.doorbells says we are idle; unknown after a (re)start.
    let waiting: boolean | null = null;
    // The page after the one in flight, read while the batch travels (the connection is idle
    // meanwhile), when the window has more rows than the page: draining a backlog, it saves a
    // read per batch. It depends only on the cursor the in-flight batch leads to, so a retried
    // batch leaves it valid. A page that finishes its window is not followed by a prefetch: the
    // next window is read after the acknowledgement, so it holds everything committed during the
    // flight (a prefetch would have been taken at the flight's start, and rows committed during
    // the flight would wait for one more round trip: about 2.5 round trips of latency instead
    // of 1.5 under a steady load).
    let prefetched: Promise<Page> | null = null;
    // Whether `cursor` was acknowledged but not yet persisted: the next read persists it in the
    // same statement (one round trip fewer per batch). Should the relay die first, it re-sends
    // that batch on restart, and the channels drop the ids they already stored.
    let unsaved = false;
    while (!this.stopping && !session.closed) {
      session.rung = false;
      const page = prefetched ? await prefetched : await readPage(db, cursor, batchSize, batchBytes, partition, unsaved ? name : null);
      prefetched = null;
      unsaved = false;
      if (page.rows.length > 0) {
        // Writers may stop ringing; the update runs while the batch is in flight, not before it.
        const quiet = waiting !== false ? this.setWaiting(db, false) : null;
        quiet?.catch(() => undefined); // a lost connection surfaces through the session
        waiting = false;
        const next = advance(cursor, page);
        if (!page.complete) {
          prefetched = readPage(db, next, batchSize, batchBytes, partition);
          prefetched.catch(() => undefined);
        }
        const events = page.rows.map((r) => ({ id: `${installId}-${r.id}`, channel: r.channel, event: r.event, data: r.data, ts: r.ts, retain: r.retain }));
        const info = await this.deliver("outbox", events);
        await quiet;
        cursor = next;
        // A page read ahead was read from this cursor already: it is saved on its own.
        if (prefetched) await saveCursor(db, name, cursor);
        else unsaved = true;
        this.cursor = cursor;
        this.log.debug("batch acknowledged", { ...info });
        this.emit("batch", info);
        continue;
      }
      // Window empty: the cursor can move to its target without a write (re-reading an empty
      // window after a restart costs nothing).
      cursor = advance(cursor, page);
      if (waiting !== true) {
        // Tell writers to ring, then look once more: a commit between the read above and this
        // update did not ring, but is visible now.
        await this.setWaiting(db, true);
        waiting = true;
        continue;
      }
      this.emit("idle");
      if (!session.rung) await session.waitFor(pollIntervalMs, this.stopController.signal);
    }
    if (unsaved && !session.closed) await saveCursor(db, name, cursor).catch(() => undefined);
    // A stopped relay must not leave writers ringing (each ring costs them the NOTIFY lock).
    if (waiting !== false && !session.closed) await this.setWaiting(db, false).catch(() => undefined);
  }

  /**
   * The wal source (relay/wal.ts): streams the slot, POSTs what it decoded, and moves the slot
   * past each transaction once the Worker has acknowledged all of its events.
   */
  private async walLoop(session: Session): Promise<void> {
    const { batchSize, batchBytes } = this.options;
    const installId = await session.installId();
    const slot = slotName(installId, this.cursorName);
    await this.replaceLostSlot(session, slot);
    const { createdSlot } = await ensureWalCapture(session.query, slot, this.options.source === "publication" ? "publication" : "wal");
    if (createdSlot) this.log.info("created replication slot", { slot });
    await this.announceLostEvents(session, slot, installId);
    // Row changes of published tables become events through the watches' routes and the types' JSON rules.
    const changes = { routes: new WatchRoutes(session.listener), catalog: new TypeCatalog(session.listener) };
    const stream = await this.openStream(session, slot, (relation) => changes.routes.forget(relation.oid));
    this.log.info("streaming", { slot });
    this.emit("streaming", { slot });
    session.onClose(() => stream.close());
    // A stop while a batch is in flight lets it finish and be acknowledged (the loop then ends and
    // closes the stream, reporting the position); a stop while waiting for events ends the wait.
    let inFlight = false;
    const onStop = () => void (inFlight ? undefined : stream.close());
    this.stopController.signal.addEventListener("abort", onStop, { once: true });
    this.walSlot = slot;
    // A heartbeat: a message in this database's WAL now and then, so the slot moves on while
    // nothing watched is written here (the stream then has something to confirm past).
    const heartbeat = this.options.heartbeatMs > 0 ? setInterval(() => {
      if (session.closed) return;
      session.listener.query("select pg_logical_emit_message(false, 'realtime_heartbeat', '')").catch(() => undefined);
    }, this.options.heartbeatMs) : null;
    heartbeat?.unref();
    session.onClose(async () => {
      if (heartbeat) clearInterval(heartbeat);
    });
    try {
      while (!this.stopping && !session.closed) {
        const batch = await stream.take(batchSize, batchBytes);
        if (!batch) break;
        if (batch.records.length === 0) {
          stream.ack(batch); // commits only: nothing to send
          continue;
        }
        inFlight = true;
        const events = await this.walEvents(installId, batch.records, changes);
        const info = events.length > 0 ? await this.deliver(this.options.source === "publication" ? "publication" : "wal", events) : null;
        stream.ack(batch);
        inFlight = false;
        if (!info) continue;
        this.log.debug("batch acknowledged", { ...info, lsn: batch.ackLsn === null ? null : formatLsn(batch.ackLsn) });
        this.emit("batch", info);
      }
    } catch (err) {
      if (err instanceof StoppedError) return;
      throw err;
    } finally {
      this.stopController.signal.removeEventListener("abort", onStop);
      await stream.close();
    }
  }

  /**
   * A slot Postgres invalidated (it held more WAL than max_slot_wal_keep_size, or a standby's
   * conflict) can no longer stream: the events written since it fell behind are lost. It is
   * dropped (ensureWalCapture then makes it anew) and the loss recorded, to be announced.
   */
  private async replaceLostSlot(session: Session, slot: string): Promise<void> {
    const { rows } = await session.query.query<{ s: Record<string, unknown> }>("select to_jsonb(s) as s from pg_replication_slots s where slot_name = $1", [slot]);
    const state = rows[0]?.s;
    if (!state || (state.wal_status !== "lost" && (state.invalidation_reason ?? null) === null)) return;
    const generation = `${Date.now().toString(36)}${randomUUID().slice(0, 4)}`;
    this.log.error("the replication slot was invalidated: events written since it fell behind are lost; making a new slot, and every channel starts a new epoch", {
      slot,
      walStatus: state.wal_status,
      reason: state.invalidation_reason ?? null,
      generation,
    });
    await session.query.query("select pg_drop_replication_slot($1)", [slot]);
    await session.query.query(
      "insert into realtime.slot_epochs (slot, generation, announced, lost_at) values ($1, $2, false, now()) on conflict (slot) do update set generation = excluded.generation, announced = false, lost_at = now()",
      [slot, generation],
    );
    this.emit("slotLost", { slot, generation });
  }

  /**
   * After a lost slot (see replaceLostSlot), tells every channel this installation delivered to
   * that its history has a hole: a reset notice each (they start a new epoch; their clients reset),
   * then captures the retaining watches' rows again, through the new slot. Done once per loss; a
   * relay stopped half-way does it again (the notices' ids are the same: channels drop repeats).
   */
  private async announceLostEvents(session: Session, slot: string, installId: string): Promise<void> {
    const { rows } = await session.query.query<{ generation: string }>("select generation from realtime.slot_epochs where slot = $1 and not announced", [slot]);
    const generation = rows[0]?.generation;
    if (!generation) return;
    const { rows: channels } = await session.query.query<{ name: string }>("select name from realtime.channels order by name");
    const data = JSON.stringify({ reason: "slot_lost", slot });
    const now = Date.now();
    for (let i = 0; i < channels.length; i += this.options.batchSize) {
      const notices = channels.slice(i, i + this.options.batchSize).map(({ name }) => ({
        id: `${installId}-lost-${generation}-${createHash("sha256").update(name).digest("hex").slice(0, 24)}`,
        channel: name,
        event: "reset",
        data,
        ts: now,
        reset: true,
      }));
      await this.ingest.deliver(notices, this.stopController.signal);
    }
    const { rows: recaptured } = await session.query.query<{ n: string }>("select realtime.recapture_retained() as n");
    await session.query.query("update realtime.slot_epochs set announced = true where slot = $1 and generation = $2", [slot, generation]);
    this.log.warn("announced the lost events: channels start a new epoch, retained rows captured again", { slot, channels: channels.length, recapturedRows: Number(recaptured[0]?.n ?? 0) });
  }

  /**
   * Records channel names this relay delivered to for the first time (realtime.channels), which
   * are the ones told of a loss at the source. Known names cost nothing; new ones one insert.
   */
  private async rememberChannels(channels: Iterable<string>): Promise<void> {
    const fresh = [...new Set(channels)].filter((c) => !this.knownChannels.has(c));
    if (fresh.length === 0 || !this.session || this.session.closed) return;
    await this.session.listener.query("insert into realtime.channels (name) select unnest($1::text[]) on conflict (name) do nothing", [fresh]);
    for (const c of fresh) this.knownChannels.add(c);
  }

  /**
   * The events of a batch's records, in order: a `realtime` message is an event as written; a row
   * change of a published table becomes the events a trigger would have written (relay/changes.ts).
   * Ids are the WAL position (and, for several events from one record, their index), the same on
   * every re-read. A change that names no valid channel is logged and counted, never sent.
   */
  private async walEvents(installId: string, records: WalRecord[], changes: { routes: WatchRoutes; catalog: TypeCatalog }): Promise<OutgoingEvent[]> {
    const events: OutgoingEvent[] = [];
    for (const r of records) {
      if (r.kind === "message") {
        events.push({ id: `${installId}-w${r.lsn}`, channel: r.channel, event: r.event, data: r.data, ts: r.ts, retain: r.retain });
        continue;
      }
      const built = await this.changeEvents(r.change, changes);
      const base = `${installId}-w${r.lsn}${r.ordinal > 0 ? `.${r.ordinal}` : ""}`;
      built.events.forEach((e, i) => events.push({ id: i === 0 ? base : `${base}:${i}`, channel: e.channel, event: e.event, data: e.data, ts: r.ts, retain: e.retain }));
      for (const u of built.unroutable) {
        this.log.error("a change names no valid channel; not sent", { table: u.table, reason: u.reason, lsn: formatLsn(r.lsn) });
        this.emit("unroutable", u);
      }
    }
    return events;
  }

  /**
   * The events of one row change. A value whose text does not fit its type as loaded (a type
   * altered since) reloads the types once; a change that still cannot be turned into events is
   * logged and counted, and the stream goes on: one row never stops it. A failing catalog query
   * (the connection) ends the session, as any, and the batch is read again.
   */
  private async changeEvents(change: RowChange, changes: { routes: WatchRoutes; catalog: TypeCatalog }): Promise<{ events: ChangeEventText[]; unroutable: Unroutable[] }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await toEvents(change, changes.routes, changes.catalog);
      } catch (err) {
        if (!(err instanceof PgJsonError)) throw err;
        if (attempt === 0) {
          changes.catalog.clear();
          continue;
        }
        const table = change.op === "truncate" ? change.relations.map((r) => `${r.schema}.${r.table}`).join(", ") : `${change.relation.schema}.${change.relation.table}`;
        return { events: [], unroutable: [{ table, reason: `its values could not be read as their types say: ${err.message}` }] };
      }
    }
  }

  /**
   * Starts streaming the slot. A leader that was just killed may still hold the slot for a moment
   * (its walsender has not noticed yet): "active for PID" is retried for up to 10 s.
   */
  private async openStream(session: Session, slot: string, onRelation: (relation: Relation) => void): Promise<WalStream> {
    const { rows } = await session.query.query<{ lsn: string }>("select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = $1", [slot]);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const stream = new WalStream({
        databaseUrl: this.options.databaseUrl,
        slot,
        applicationName: `pg-edge-realtime relay ${this.options.name} (wal)`,
        // A few batches, so the next is ready when one is acknowledged.
        maxBufferedEvents: Math.max(4 * this.options.batchSize, 1000),
        maxBufferedBytes: 4 * this.options.batchBytes,
        startLsn: parseLsn(rows[0]!.lsn),
        onRelation,
        onSkipped: (info) => this.log.error("skipped a 'realtime' WAL message the capture functions did not write", { lsn: formatLsn(info.lsn), error: info.error }),
      });
      try {
        await stream.start();
        return stream;
      } catch (err) {
        await stream.close();
        if (!/is active for PID/.test((err as Error).message) || Date.now() > deadline || this.stopping || session.closed) throw err;
        await session.waitFor(100, this.stopController.signal, "wal");
      }
    }
  }

  /**
   * Delivers one batch of `source` (see IngestClient.deliver): what the Worker refused, alone, is
   * logged with its source id and emitted, and the batch's figures come back for the caller's log.
   */
  private async deliver(source: BatchInfo["source"], events: OutgoingEvent[]): Promise<BatchInfo> {
    const started = performance.now();
    const delivery: Delivery = await this.ingest.deliver(events, this.stopController.signal);
    await this.rememberChannels(events.map((e) => e.channel));
    for (const refused of delivery.refused) {
      this.log.error("the Worker refused an event; skipped so that the others go on", { ...refused, source });
      this.emit("refused", refused);
    }
    const { accepted, duplicates, markers } = delivery;
    return { source, events: events.length, accepted, duplicates, markers, refused: delivery.refused.length, ms: performance.now() - started };
  }

  /** Tells writers to ring (or not) for this relay's cursor. */
  private setWaiting(db: SerialClient, waiting: boolean): Promise<unknown> {
    return db.query("insert into realtime.doorbells (name, waiting) values ($1, $2) on conflict (name) do update set waiting = excluded.waiting", [this.cursorName, waiting]);
  }

  /** The cursor, leader-lock and doorbell name: RELAY_NAME, plus the partition when partitioned. */
  get cursorName(): string {
    const p = this.options.partition;
    return p ? `${this.options.name}:p${p.index}of${p.count}` : this.options.name;
  }

  /**
   * Deletes delivered rows past the retention, in bounded statements. It runs on the listener
   * connection so that a prune never delays the outbox reader's next read.
   */
  private async pruneLoop(session: Session): Promise<void> {
    const { retentionSeconds, pruneBatch, pruneIntervalMs } = this.options;
    while (!this.stopping && !session.closed) {
      let rows = 0;
      let statements = 0;
      for (;;) {
        const deleted = await pruneDelivered(session.listener, retentionSeconds, pruneBatch);
        rows += deleted;
        statements++;
        if (deleted < pruneBatch || this.stopping || session.closed) break;
      }
      if (rows > 0) this.log.info("pruned delivered outbox rows", { rows, statements });
      this.emit("pruned", { rows, statements });
      await session.waitFor(pruneIntervalMs, this.stopController.signal, "prune");
    }
  }

  private onNotify(pgChannel: string, payload: string): void {
    const route = this.options.notify.find((r) => r.pgChannel === pgChannel);
    if (!route) return;
    // NOTIFY payloads are text; JSON is forwarded as the JSON text it is, anything else as a string.
    const data = isJson(payload) ? payload : JSON.stringify(payload);
    this.notifyQueue.push({ id: randomUUID(), channel: route.channel, event: "notify", data, ts: Date.now() });
    if (this.notifyQueue.length > this.options.notifyQueueMax) {
      const count = this.notifyQueue.length - this.options.notifyQueueMax;
      this.notifyQueue.splice(0, count);
      this.log.warn("NOTIFY queue full, oldest payloads dropped", { count });
      this.emit("dropped", { count });
    }
    this.session?.wake("notify");
  }

  private async notifyLoop(session: Session): Promise<void> {
    if (this.options.notify.length === 0 || (this.options.partition && this.options.partition.index !== 0)) return;
    while (!this.stopping && !session.closed) {
      if (this.notifyQueue.length === 0) {
        await session.waitFor(this.options.pollIntervalMs, this.stopController.signal, "notify");
        continue;
      }
      const events = this.notifyQueue.slice(0, this.options.batchSize);
      try {
        this.emit("batch", await this.deliver("notify", events));
      } catch (err) {
        if (err instanceof StoppedError) return;
        throw err;
      }
      // Remove what was sent; the queue may have been trimmed from the front meanwhile.
      const sent = new Set(events.map((e) => e.id));
      this.notifyQueue = this.notifyQueue.filter((e) => !sent.has(e.id));
    }
  }
}

/** What a session's waits are for; each can be woken on its own. */
type Slot = "outbox" | "notify" | "prune" | "wal";

/**
 * One connection attempt: a query connection (holds the leader lock, reads, writes the cursor)
 * and a listener connection (doorbell and forwarded NOTIFY channels).
 */
class Session {
  /** The connection that holds the leader lock and reads and writes the outbox's state. */
  readonly query: SerialClient;
  /** The connection that LISTENs (doorbell, NOTIFY forwarding); prunes and metrics use it too. */
  readonly listener: SerialClient;
  leader = false;
  closed = false;
  /** Set by a doorbell; cleared by the outbox loop before each read. */
  rung = false;
  private readonly wakers = new Map<Slot, () => void>();
  private failure: Error | null = null;

  constructor(private readonly options: ResolvedRelayOptions) {
    const config = {
      connectionString: options.databaseUrl,
      application_name: `pg-edge-realtime relay ${options.name}`,
      keepAlive: true,
      // A connect that hangs (a server not answering) fails and is retried, instead of stalling the relay.
      connectionTimeoutMillis: 10_000,
    };
    this.query = new SerialClient(new pg.Client(config));
    this.listener = new SerialClient(new pg.Client(config));
    for (const { client } of [this.query, this.listener]) {
      // A dropped connection surfaces here (and as a failed query); it ends the session.
      client.on("error", (err) => this.lost(err));
      client.on("end", () => this.lost(new Error("database connection closed")));
    }
    this.listener.client.on("notification", (msg) => {
      if (msg.channel === DOORBELL_CHANNEL) {
        this.rung = true;
        this.wake();
      } else {
        this.onNotification?.(msg.channel, msg.payload ?? "");
      }
    });
  }

  private onNotification: ((channel: string, payload: string) => void) | null = null;

  async connect(): Promise<void> {
    await Promise.all([this.query.client.connect(), this.listener.client.connect()]);
    // The relay's own writes (cursor, doorbell, prunes) need not wait for a WAL flush: a cursor
    // lost in a crash only re-sends batches the channels drop as duplicates, and a lost doorbell
    // state is rewritten on the next loop. This takes an fsync off the delivery path.
    await Promise.all([this.query.query("set synchronous_commit = off"), this.listener.query("set synchronous_commit = off")]);
  }

  /** The installation's id (prefix of every outbox event id). */
  async installId(): Promise<string> {
    const { rows } = await this.query.query<{ install_id: string }>("select install_id from realtime.installation");
    if (!rows[0]) throw new Error("realtime schema is not installed: run `npx pg-edge-realtime install` (or psql -f sql/realtime.sql)");
    return rows[0].install_id;
  }

  async tryLock(name: string): Promise<boolean> {
    const { rows } = await this.query.query<{ locked: boolean }>(
      "select pg_try_advisory_lock(hashtext('pg-edge-realtime'), hashtext($1)) as locked",
      [name],
    );
    this.leader = rows[0]!.locked;
    return this.leader;
  }

  async listen(channels: string[], onNotification: (channel: string, payload: string) => void): Promise<void> {
    this.onNotification = onNotification;
    for (const channel of [DOORBELL_CHANNEL, ...channels]) await this.listener.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
  }

  /**
   * Sleeps up to `ms` in `slot`; a wake of that slot, a stop or a lost connection ends it early.
   * Throws the connection's error if the session was lost.
   */
  async waitFor(ms: number, signal: AbortSignal, slot: Slot = "outbox"): Promise<void> {
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.wakers.delete(slot);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.wakers.set(slot, done);
      if (this.closed || this.failure || signal.aborted) done();
    });
    if (this.failure) throw this.failure;
  }

  /** Ends a wait in `slot` (a doorbell, a queued NOTIFY payload). */
  wake(slot: Slot = "outbox"): void {
    this.wakers.get(slot)?.();
  }

  private lost(err: Error): void {
    if (this.closed || this.failure) return;
    this.failure = err;
    for (const wake of [...this.wakers.values()]) wake();
  }

  private readonly closers: (() => Promise<unknown>)[] = [];

  /** Runs `fn` when the session closes (the wal stream's connection). */
  onClose(fn: () => Promise<unknown>): void {
    this.closers.push(fn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const wake of [...this.wakers.values()]) wake();
    await Promise.allSettled(this.closers.map((fn) => fn()));
    // Ending the query connection releases the advisory lock: a standby takes over at once.
    await Promise.allSettled([this.query.client.end(), this.listener.client.end()]);
  }
}
