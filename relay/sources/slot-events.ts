/**
 * The events of a slot batch's records, in order: a `realtime` message is an event as written; a
 * row change of a published table becomes the events a trigger would have written
 * (relay/changes.ts). Ids are the WAL position (and, for several events from one record, their
 * index), the same on every re-read. A change that names no valid channel is logged and counted,
 * never sent.
 */
import { type ChangeEventText, type RowChange, toEvents, type Unroutable, WatchRoutes } from "../changes.ts";
import type { Emit } from "../events.ts";
import type { OutgoingEvent } from "../ingest-client.ts";
import type { Logger } from "../log.ts";
import { PgJsonError, TypeCatalog } from "../pgjson.ts";
import type { Relation } from "../pgoutput.ts";
import type { Queryable } from "../serial.ts";
import { formatLsn, type WalRecord } from "../wal.ts";

/** One stream's event builder: the watches' routes and the types' JSON rules, read through `db`. */
export class SlotEvents {
  private readonly routes: WatchRoutes;
  private readonly catalog: TypeCatalog;

  constructor(
    db: Queryable,
    private readonly installId: string,
    private readonly log: Logger,
    private readonly emit: Emit,
  ) {
    this.routes = new WatchRoutes(db);
    this.catalog = new TypeCatalog(db);
  }

  /** A table was (re)described in the stream: its route is read again at its next change. */
  onRelation(relation: Relation): void {
    this.routes.forget(relation.oid);
  }

  async build(records: WalRecord[]): Promise<OutgoingEvent[]> {
    const events: OutgoingEvent[] = [];
    for (const r of records) {
      if (r.kind === "message") {
        events.push({ id: `${this.installId}-w${r.lsn}`, channel: r.channel, event: r.event, data: r.data, ts: r.ts, retain: r.retain });
        continue;
      }
      const built = await this.changeEvents(r.change);
      const base = `${this.installId}-w${r.lsn}${r.ordinal > 0 ? `.${r.ordinal}` : ""}`;
      built.events.forEach((e, i) => {
        events.push({ id: i === 0 ? base : `${base}:${i}`, channel: e.channel, event: e.event, data: e.data, ts: r.ts, retain: e.retain });
      });
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
  private async changeEvents(change: RowChange): Promise<{ events: ChangeEventText[]; unroutable: Unroutable[] }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await toEvents(change, this.routes, this.catalog);
      } catch (err) {
        if (!(err instanceof PgJsonError)) throw err;
        if (attempt === 0) {
          this.catalog.clear();
          continue;
        }
        const table =
          change.op === "truncate" ? change.relations.map((r) => `${r.schema}.${r.table}`).join(", ") : `${change.relation.schema}.${change.relation.table}`;
        return { events: [], unroutable: [{ table, reason: `its values could not be read as their types say: ${err.message}` }] };
      }
    }
  }
}
