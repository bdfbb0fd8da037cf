/**
 * The slot sources, `wal` and `publication` (relay/wal.ts): stream the relay's replication slot,
 * POST what it decoded, and move the slot past each transaction once the Worker has acknowledged
 * all of its events. The slot is the cursor: a relay that dies re-reads from there.
 */
import { StoppedError } from "../ingest-client.ts";
import type { Relation } from "../pgoutput.ts";
import type { Session } from "../session.ts";
import { ensureWalCapture, formatLsn, parseLsn, slotName, WalStream } from "../wal.ts";
import { SlotEvents } from "./slot-events.ts";
import { announceLostEvents, replaceLostSlot } from "./slot-recovery.ts";
import type { Source, SourceContext } from "./source.ts";

/** The slot as Postgres reports it: see {@link SlotSource.health}. */
export interface SlotHealth {
  retainedBytes: number;
  lagBytes: number;
  walStatus: string | null;
  safeWalSize: number | null;
}

export class SlotSource implements Source {
  /** The slot, once it streams. */
  private slot: string | null = null;

  constructor(private readonly ctx: SourceContext) {}

  private get mode(): "wal" | "publication" {
    return this.ctx.options.source === "publication" ? "publication" : "wal";
  }

  async run(session: Session): Promise<void> {
    const { options, log, emit, signal } = this.ctx;
    const { batchSize, batchBytes } = options;
    const installId = await session.installId();
    const slot = slotName(installId, this.ctx.cursorName);
    await replaceLostSlot(this.ctx, session, slot);
    const { createdSlot } = await ensureWalCapture(session.query, slot, this.mode);
    if (createdSlot) log.info("created replication slot", { slot });
    await announceLostEvents(this.ctx, session, slot, installId);
    // Row changes of published tables become events through the watches' routes and the types' JSON rules.
    const changes = new SlotEvents(session.listener, installId, log, emit);
    const stream = await this.openStream(session, slot, (relation) => changes.onRelation(relation));
    log.info("streaming", { slot });
    emit("streaming", { slot });
    session.onClose(() => stream.close());
    // A stop while a batch is in flight lets it finish and be acknowledged (the loop then ends and
    // closes the stream, reporting the position); a stop while waiting for events ends the wait.
    let inFlight = false;
    const onStop = () => void (inFlight ? undefined : stream.close());
    signal.addEventListener("abort", onStop, { once: true });
    this.slot = slot;
    this.startHeartbeat(session);
    try {
      while (!signal.aborted && !session.closed) {
        const batch = await stream.take(batchSize, batchBytes);
        if (!batch) break;
        if (batch.records.length === 0) {
          stream.ack(batch); // commits only: nothing to send
          continue;
        }
        inFlight = true;
        const events = await changes.build(batch.records);
        const info = events.length > 0 ? await this.ctx.deliver(this.mode, events) : null;
        stream.ack(batch);
        inFlight = false;
        if (!info) continue;
        log.debug("batch acknowledged", { ...info, lsn: batch.ackLsn === null ? null : formatLsn(batch.ackLsn) });
        emit("batch", info);
      }
    } catch (err) {
      if (err instanceof StoppedError) return;
      throw err;
    } finally {
      signal.removeEventListener("abort", onStop);
      await stream.close();
    }
  }

  /**
   * A message in this database's WAL every --heartbeat ms, so the slot moves on while nothing
   * watched is written here (the stream then has something to confirm past) and other databases
   * of the cluster write WAL the slot would otherwise keep.
   */
  private startHeartbeat(session: Session): void {
    const { heartbeatMs } = this.ctx.options;
    const heartbeat =
      heartbeatMs > 0
        ? setInterval(() => {
            if (session.closed) return;
            session.listener.query("select pg_logical_emit_message(false, 'realtime_heartbeat', '')").catch(() => undefined);
          }, heartbeatMs)
        : null;
    heartbeat?.unref();
    session.onClose(async () => {
      if (heartbeat) clearInterval(heartbeat);
    });
  }

  /**
   * Starts streaming the slot. A leader that was just killed may still hold the slot for a moment
   * (its walsender has not noticed yet): "active for PID" is retried for up to 10 s.
   */
  private async openStream(session: Session, slot: string, onRelation: (relation: Relation) => void): Promise<WalStream> {
    const { options, log, signal } = this.ctx;
    const { rows } = await session.query.query<{ lsn: string }>("select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = $1", [
      slot,
    ]);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const stream = new WalStream({
        databaseUrl: options.databaseUrl,
        slot,
        applicationName: `pg-edge-realtime relay ${options.name} (wal)`,
        // A few batches, so the next is ready when one is acknowledged.
        maxBufferedEvents: Math.max(4 * options.batchSize, 1000),
        maxBufferedBytes: 4 * options.batchBytes,
        startLsn: parseLsn(rows[0]!.lsn),
        onRelation,
        onSkipped: (info) => log.error("skipped a 'realtime' WAL message the capture functions did not write", { lsn: formatLsn(info.lsn), error: info.error }),
      });
      try {
        await stream.start();
        return stream;
      } catch (err) {
        await stream.close();
        if (!/is active for PID/.test((err as Error).message) || Date.now() > deadline || signal.aborted || session.closed) throw err;
        await session.waitFor(100, signal, "wal");
      }
    }
  }

  /**
   * Bytes of WAL the slot still holds (the server's position minus the slot's confirmed one: 0
   * when caught up), once it streams; null before.
   */
  async lag(session: Session): Promise<{ bytes: number } | null> {
    if (!this.slot) return null;
    const { rows } = await session.listener.query<{ bytes: string | null }>(
      "select (pg_current_wal_lsn() - confirmed_flush_lsn)::text as bytes from pg_replication_slots where slot_name = $1",
      [this.slot],
    );
    return rows[0]?.bytes == null ? null : { bytes: Math.max(0, Number(rows[0].bytes)) };
  }

  /**
   * The slot as Postgres reports it (pg_replication_slots), once it streams; null before: WAL it
   * keeps (`retainedBytes`, from restart_lsn), WAL not yet acknowledged (`lagBytes`, from
   * confirmed_flush_lsn), `walStatus` (reserved, extended, unreserved: at risk; lost: invalidated)
   * and `safeWalSize` (bytes it may still fall behind before max_slot_wal_keep_size invalidates it;
   * null when that is unlimited).
   */
  async health(session: Session): Promise<SlotHealth | null> {
    if (!this.slot) return null;
    const { rows } = await session.listener.query<{ retained: string | null; lag: string | null; wal_status: string | null; safe_wal_size: string | null }>(
      `select (pg_current_wal_lsn() - restart_lsn)::text as retained, (pg_current_wal_lsn() - confirmed_flush_lsn)::text as lag,
              wal_status, safe_wal_size::text as safe_wal_size
         from pg_replication_slots where slot_name = $1`,
      [this.slot],
    );
    const r = rows[0];
    if (!r) return null;
    const num = (v: string | null) => (v === null ? null : Math.max(0, Number(v)));
    return {
      retainedBytes: num(r.retained) ?? 0,
      lagBytes: num(r.lag) ?? 0,
      walStatus: r.wal_status,
      safeWalSize: r.safe_wal_size === null ? null : Number(r.safe_wal_size),
    };
  }
}
