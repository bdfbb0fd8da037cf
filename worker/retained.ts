/**
 * Retained state: the latest version of every row of the channel's watches made with
 * `retain => true`, kept in the channel's SQLite so that a new subscriber is sent the current rows
 * (a `snapshot` frame) instead of asking the database. Bounded by STATE_MAX_ROWS and
 * STATE_MAX_BYTES; past either, the channel stops retaining (for good, in this epoch), says so in
 * its snapshots (`overflow: true`) and logs an error, rather than serve a state with holes.
 */
import type { ChangeText, RowFilter } from "../protocol/index.ts";
import { matchesRowText, rowKey, snapshotFrame, snapshotRowJson, utf8Length } from "../protocol/index.ts";
import { log } from "./log.ts";

/** A retained row as stored: key and row are JSON text; row is null when too large to retain. */
export interface StoredRow {
  schema: string;
  tbl: string;
  key: string;
  row: string | null;
  seq: number;
}

const SCHEMA = `
  create table if not exists state (
    k text primary key,
    schema text not null,
    tbl text not null,
    key text not null,
    row text not null,
    seq integer not null
  );
`;

/** The retained rows of one channel. */
export class RetainedState {
  constructor(
    private readonly sql: SqlStorage,
    private readonly maxRows: number,
    private readonly maxBytes: number,
    private readonly meta: { get(key: string): string | undefined; set(key: string, value: string): void },
  ) {
    sql.exec(SCHEMA);
    // Rows too large to retain are kept as their key and this flag (state from before it existed has none).
    if (
      !sql
        .exec<{ name: string }>("pragma table_info(state)")
        .toArray()
        .some((c) => c.name === "oversized")
    ) {
      sql.exec("alter table state add column oversized integer not null default 0");
    }
  }

  /** True once the channel has received a retained event (it then sends snapshots). */
  get active(): boolean {
    return this.meta.get("retains") === "1";
  }

  get overflowed(): boolean {
    return this.meta.get("state_overflow") === "1";
  }

  /**
   * Applies retained change events, in seq order: INSERT and UPDATE keep the new row (a marker,
   * whose row was too large to carry, keeps the key flagged `oversized`), DELETE drops it, TRUNCATE
   * drops the table's rows. Keys compare by their exact JSON text. Called inside the publish
   * transaction.
   */
  apply(events: { seq: number; change: ChangeText }[]): void {
    if (events.length === 0) return;
    if (!this.active) this.meta.set("retains", "1");
    if (this.overflowed) return;
    // Collapse the batch to one write per row, flushing before a TRUNCATE (rare) so order holds.
    let pending = new Map<string, { schema: string; tbl: string; key: string; row: string | null; oversized: boolean; seq: number }>();
    let rows = Number(this.meta.get("state_rows") ?? 0);
    let bytes = Number(this.meta.get("state_bytes") ?? 0);
    const flush = () => {
      if (pending.size === 0) return;
      const changes = [...pending.entries()];
      // Sizes of the versions being replaced, for the running totals.
      const old = new Map(
        this.sql
          .exec<{ k: string; n: number }>(
            "select k, length(cast(row as blob)) as n from state where k in (select value from json_each(?))",
            JSON.stringify(changes.map(([k]) => k)),
          )
          .toArray()
          .map((r) => [r.k, r.n]),
      );
      const upserts = changes.filter(([, c]) => c.row !== null || c.oversized);
      const deletes = changes.filter(([, c]) => c.row === null && !c.oversized).map(([k]) => k);
      for (const [k, c] of changes) {
        const before = old.get(k);
        if (before !== undefined) {
          rows--;
          bytes -= before;
        }
        if (c.row !== null || c.oversized) {
          rows++;
          bytes += c.row === null ? 0 : utf8Length(c.row);
        }
      }
      if (upserts.length > 0) {
        this.sql.exec(
          `insert into state (k, schema, tbl, key, row, seq, oversized)
           select value ->> '$.k', value ->> '$.s', value ->> '$.t', value ->> '$.key', value ->> '$.row', value ->> '$.seq', value ->> '$.o' from json_each(?) where true
           on conflict (k) do update set row = excluded.row, seq = excluded.seq, oversized = excluded.oversized`,
          JSON.stringify(upserts.map(([k, c]) => ({ k, s: c.schema, t: c.tbl, key: c.key, row: c.row ?? "", seq: c.seq, o: c.oversized ? 1 : 0 }))),
        );
      }
      if (deletes.length > 0) this.sql.exec("delete from state where k in (select value from json_each(?))", JSON.stringify(deletes));
      pending = new Map();
    };
    for (const { seq, change } of events) {
      if (change.op === "TRUNCATE") {
        flush();
        const gone = this.sql
          .exec<{ n: number; b: number | null }>(
            "select count(*) as n, sum(length(cast(row as blob))) as b from state where schema = ? and tbl = ?",
            change.schema,
            change.table,
          )
          .one();
        this.sql.exec("delete from state where schema = ? and tbl = ?", change.schema, change.table);
        rows -= gone.n;
        bytes -= gone.b ?? 0;
        continue;
      }
      if (change.key === null) continue;
      const k = rowKey(change.schema, change.table, change.key);
      const deleted = change.op === "DELETE";
      pending.set(k, {
        schema: change.schema,
        tbl: change.table,
        key: change.key,
        row: deleted ? null : change.new,
        oversized: !deleted && change.new === null && change.marker,
        seq,
      });
    }
    flush();
    if (rows > this.maxRows || bytes > this.maxBytes) {
      this.sql.exec("delete from state");
      this.meta.set("state_overflow", "1");
      this.meta.set("state_rows", "0");
      this.meta.set("state_bytes", "0");
      log("error", "retained state overflow: this channel no longer retains rows", { rows, bytes, maxRows: this.maxRows, maxBytes: this.maxBytes });
      return;
    }
    this.meta.set("state_rows", String(rows));
    this.meta.set("state_bytes", String(bytes));
  }

  /** Drops every retained row and the overflow (a new epoch: the rows are captured again). */
  clear(): void {
    this.sql.exec("delete from state");
    this.meta.set("state_rows", "0");
    this.meta.set("state_bytes", "0");
    if (this.overflowed) this.meta.set("state_overflow", "0");
  }

  /** The retained version of row `k` (see rowKey): its JSON text, null when kept as too large, undefined when none. */
  get(k: string): string | null | undefined {
    const r = this.sql.exec<{ row: string; oversized: number }>("select row, oversized from state where k = ?", k).toArray()[0];
    return r === undefined ? undefined : r.oversized ? null : r.row;
  }

  /** Every retained row, oldest key first. */
  rows(): StoredRow[] {
    return this.sql
      .exec<{ schema: string; tbl: string; key: string; row: string; seq: number; oversized: number }>(
        "select schema, tbl, key, row, seq, oversized from state order by k",
      )
      .toArray()
      .map((r) => ({ schema: r.schema, tbl: r.tbl, key: r.key, row: r.oversized ? null : r.row, seq: r.seq }));
  }

  /**
   * The `snapshot` frame a joining socket at `seq` is sent (the rows `filter` passes), if this
   * channel retains rows or the socket asked for them (`requested`, `snapshot=1`): a channel that
   * has not received a retained row yet holds none, and says so with an empty snapshot rather than
   * nothing, so a client waiting for its state gets `[]`. A row too large to retain is listed with
   * its key, `row: null` and `oversized: true`; a filter cannot judge it, so every filtered socket
   * is told of it.
   */
  snapshotFrames(seq: number, filter: RowFilter | null, requested: boolean): string[] {
    if (!this.active && !requested) return [];
    if (this.overflowed) return [snapshotFrame(seq, [], true)];
    const rows = this.rows().filter((r) => !filter || r.row === null || matchesRowText(filter, r.row));
    return [
      snapshotFrame(
        seq,
        rows.map((r) => snapshotRowJson(r.schema, r.tbl, r.key, r.row, r.seq)),
      ),
    ];
  }

  /** Counters for stats. */
  size(): { rows: number; bytes: number; overflow: boolean } {
    return { rows: Number(this.meta.get("state_rows") ?? 0), bytes: Number(this.meta.get("state_bytes") ?? 0), overflow: this.overflowed };
  }
}
