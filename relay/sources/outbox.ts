/**
 * The outbox source: reads realtime.outbox in commit order (relay/outbox.ts) and moves its cursor
 * only after the Worker acknowledged a batch, so a crash at any point re-sends at most the
 * unacknowledged batch, whose copies the channels drop as duplicates. Every relay runs it: a slot
 * relay still ships the rows written before capture was switched to the WAL.
 */
import { advance, type Cursor, loadCursor, type Page, partitionSql, readPage, saveCursor } from "../outbox.ts";
import type { SerialClient } from "../serial.ts";
import type { Session } from "../session.ts";
import type { Source, SourceContext } from "./source.ts";

export class OutboxSource implements Source {
  /** The last cursor loaded or saved (acknowledged), for metrics. */
  private cursor: Cursor | null = null;

  constructor(private readonly ctx: SourceContext) {}

  /** xmin of the last acknowledged snapshot (every transaction below it is delivered), once known. */
  get cursorXmin(): number | null {
    return this.cursor ? Number(this.cursor.done.split(":")[0]) : null;
  }

  /**
   * Age in seconds of the oldest committed outbox event not yet acknowledged (0 when caught up),
   * once the cursor is known; null before. Runs on the listener connection, never delaying delivery.
   */
  async backlog(session: Session): Promise<{ oldestSeconds: number } | null> {
    if (!this.cursor) return null;
    const p = this.ctx.options.partition;
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

  async run(session: Session): Promise<void> {
    const { options, log, emit, signal } = this.ctx;
    const { batchSize, batchBytes, pollIntervalMs, partition } = options;
    const name = this.ctx.cursorName;
    const db = session.query;
    const installId = await session.installId();
    if (options.source === "outbox") await this.warnIfCaptureElsewhere(db);
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
    while (!signal.aborted && !session.closed) {
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
        const info = await this.ctx.deliver("outbox", events);
        await quiet;
        cursor = next;
        // A page read ahead was read from this cursor already: it is saved on its own.
        if (prefetched) await saveCursor(db, name, cursor);
        else unsaved = true;
        this.cursor = cursor;
        log.debug("batch acknowledged", { ...info });
        emit("batch", info);
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
      emit("idle");
      if (!session.rung) await session.waitFor(pollIntervalMs, signal);
    }
    if (unsaved && !session.closed) await saveCursor(db, name, cursor).catch(() => undefined);
    // A stopped relay must not leave writers ringing (each ring costs them the NOTIFY lock).
    if (waiting !== false && !session.closed) await this.setWaiting(db, false).catch(() => undefined);
  }

  /** An outbox relay while capture goes to the WAL: what it would ship waits in the slot instead. */
  private async warnIfCaptureElsewhere(db: SerialClient): Promise<void> {
    const { rows } = await db.query<{ capture: string }>("select capture from realtime.installation");
    const capture = rows[0]?.capture;
    if (capture && capture !== "outbox") {
      // Changes now go to the WAL, which no outbox relay reads: they wait in the slot.
      this.ctx.log.warn(
        "this relay reads the outbox, but capture is not 'outbox': changes captured since wait in the replication slot for a relay started with that source",
        {
          capture,
          fix: `start the relay with --source ${capture}, or switch back: select realtime.set_capture('outbox') (then drop the slot once it shipped everything)`,
        },
      );
    }
  }

  /** Tells writers to ring (or not) for this relay's cursor. */
  private setWaiting(db: SerialClient, waiting: boolean): Promise<unknown> {
    return db.query("insert into realtime.doorbells (name, waiting) values ($1, $2) on conflict (name) do update set waiting = excluded.waiting", [
      this.ctx.cursorName,
      waiting,
    ]);
  }
}
