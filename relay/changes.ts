/**
 * The watched tables' own changes, decoded from pgoutput, turned into the same events the trigger
 * modes write: `{op, schema, table, key, new, old}` under the event names insert, update, delete,
 * truncate, routed by each watch's channel template, marked `retain` as the watch says. The JSON
 * is built as the trigger's SQL builds it (json_build_object's `"k" : v, ...` for the envelope and
 * the key, to_json(row) for the rows; relay/pgjson.ts makes the values), so a subscriber cannot
 * tell the modes apart, except where the WAL holds less than a trigger sees (see {@link toEvents}).
 */
import { CHANNEL_PATTERN } from "../protocol/index.ts";
import { escapeJson, type PgType, rowToJson, type TypeCatalog, textToJson } from "./pgjson.ts";
import { type Relation, type TupleValue, UNCHANGED } from "./pgoutput.ts";
import type { Queryable } from "./serial.ts";

/** How a watched table's changes are routed, as realtime.watches says, with current column names. */
export interface WatchRoute {
  /** The template's literal parts and column names, in order: `tenant:{tenant_id}` is ["tenant:", {column: "tenant_id"}]. */
  template: (string | { column: string })[];
  retain: boolean;
  /** Primary-key columns in key order; empty when the table has none (its replica identity FULL identifies rows). */
  primaryKey: string[];
}

/** A row change as the stream decoded it, with the relation as it was when the change was made. */
export type RowChange =
  | { op: "insert"; relation: Relation; new: TupleValue[] }
  | { op: "update"; relation: Relation; old: TupleValue[] | null; oldIsKey: boolean; new: TupleValue[] }
  | { op: "delete"; relation: Relation; old: TupleValue[]; oldIsKey: boolean }
  | { op: "truncate"; relations: Relation[] };

/** One event built from a change, before it gets its id and time. */
export interface ChangeEventText {
  channel: string;
  event: "insert" | "update" | "delete" | "truncate";
  /** The event's data, JSON text. */
  data: string;
  retain: boolean;
}

/** A change that could not become an event (it names no valid channel), and why. */
export interface Unroutable {
  table: string;
  reason: string;
}

/**
 * The watches' routes, loaded from realtime.watches by table oid, column names as they are now
 * (template columns are kept by attnum, so a rename is followed). Reloaded for a table when its
 * shape may have changed: pgoutput sends a Relation message after each DDL.
 */
export class WatchRoutes {
  private readonly routes = new Map<number, Promise<WatchRoute | null>>();

  constructor(private readonly db: Queryable) {}

  /** The route of table `oid`, or null when it is not watched (or its watch is suspended). */
  get(oid: number): Promise<WatchRoute | null> {
    let route = this.routes.get(oid);
    if (!route) {
      route = this.load(oid);
      route.catch(() => this.routes.delete(oid));
      this.routes.set(oid, route);
    }
    return route;
  }

  /** Forgets table `oid` (or every table): the next change loads its route again. */
  forget(oid?: number): void {
    if (oid === undefined) this.routes.clear();
    else this.routes.delete(oid);
  }

  private async load(oid: number): Promise<WatchRoute | null> {
    const { rows } = await this.db.query<{ channel: string; retain: boolean; template_columns: string[] | null; primary_key: string[] | null }>(
      `select w.channel, w.retain,
              (select array_agg(a.attname::text order by t.ord)
                 from unnest(w.template_attnums) with ordinality t(attnum, ord)
                 join pg_attribute a on a.attrelid = w.tbl and a.attnum = t.attnum and not a.attisdropped) as template_columns,
              (select array_agg(a.attname::text order by k.ord)
                 from pg_index i
                 cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
                 join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                where i.indrelid = w.tbl and i.indisprimary) as primary_key
         from realtime.watches w
        where w.tbl = $1::oid and w.suspended is null`,
      [oid],
    );
    const row = rows[0];
    if (!row) return null;
    return { template: parseTemplate(row.channel, row.template_columns), retain: row.retain, primaryKey: row.primary_key ?? [] };
  }
}

/**
 * A channel template's parts. Its placeholders name columns; `columns` (by attnum, current
 * names) replaces them in order when given, so a renamed column is still found.
 */
export function parseTemplate(template: string, columns: string[] | null): WatchRoute["template"] {
  const parts: WatchRoute["template"] = [];
  let placeholder = 0;
  for (const piece of template.split(/(\{[^{}]+\})/)) {
    if (piece === "") continue;
    if (piece.startsWith("{") && piece.endsWith("}")) parts.push({ column: columns?.[placeholder++] ?? piece.slice(1, -1) });
    else parts.push(piece);
  }
  return parts;
}

/** json_build_object's text for pairs of a name and a JSON text: `{"a" : 1, "b" : "x"}`. */
function buildObject(pairs: [string, string][]): string {
  return pairs.length === 0 ? "{}" : `{${pairs.map(([k, v]) => `${escapeJson(k)} : ${v}`).join(", ")}}`;
}

/** The row's values by column, its types, and JSON texts, for one tuple of a relation. */
class Tuple {
  constructor(
    readonly relation: Relation,
    readonly values: TupleValue[],
    readonly types: PgType[],
  ) {}

  index(column: string): number {
    return this.relation.columns.findIndex((c) => c.name === column);
  }

  /** The text of `column`: undefined when the tuple does not carry it (not in the WAL). */
  text(column: string): string | null | undefined {
    const i = this.index(column);
    const v = i < 0 ? undefined : this.values[i];
    return v === UNCHANGED ? undefined : v;
  }

  json(column: string): string | undefined {
    const i = this.index(column);
    const v = this.values[i];
    return i < 0 || v === undefined || v === UNCHANGED ? undefined : textToJson(v, this.types[i]!);
  }

  /** to_json of the row; columns whose value is not in the WAL (unchanged TOAST) are left out and named. */
  row(): { json: string; unchanged: string[] } {
    const unchanged: string[] = [];
    const values: (string | null)[] = [];
    const columns: { name: string; type: PgType }[] = [];
    this.relation.columns.forEach((c, i) => {
      const v = this.values[i];
      if (v === UNCHANGED || v === undefined) {
        unchanged.push(c.name);
        return;
      }
      values.push(v);
      columns.push({ name: c.name, type: this.types[i]! });
    });
    return { json: rowToJson(values, columns), unchanged };
  }
}

/**
 * The events of one row change (two for an update that moves the row to another key or
 * channel: a delete on the old, an insert on the new, as the trigger modes do), or the reason
 * it names no valid channel. What the WAL holds decides a few things a trigger would see:
 * - `old` is the whole previous row under REPLICA IDENTITY FULL; under the default identity it is
 *   the key's columns when the key changed (and for deletes), else null;
 * - an update leaves out the TOASTed columns it did not change (the WAL does not carry them) and
 *   names them in `"unchanged"`; a retaining channel fills them from the row it keeps;
 * - routing reads the template's columns from the new row, or from the old one for a delete: a
 *   template column outside the replica identity cannot route a delete, which watch() refuses.
 */
export async function toEvents(change: RowChange, routes: WatchRoutes, catalog: TypeCatalog): Promise<{ events: ChangeEventText[]; unroutable: Unroutable[] }> {
  const events: ChangeEventText[] = [];
  const unroutable: Unroutable[] = [];
  if (change.op === "truncate") {
    for (const relation of change.relations) {
      const route = await routes.get(relation.oid);
      // A templated watch has no one channel to tell (as the trigger modes, which do not capture it).
      if (!route || route.template.some((p) => typeof p !== "string")) continue;
      const data = buildObject([
        ["op", '"TRUNCATE"'],
        ["schema", escapeJson(relation.schema)],
        ["table", escapeJson(relation.table)],
        ["key", "{}"],
        ["new", "null"],
        ["old", "null"],
      ]);
      events.push({ channel: route.template.join(""), event: "truncate", data, retain: route.retain });
    }
    return { events, unroutable };
  }
  const { relation } = change;
  const route = await routes.get(relation.oid);
  if (!route) return { events, unroutable };
  const types = await catalog.getMany(relation.columns.map((c) => c.type));
  const keyColumns = route.primaryKey.length > 0 ? route.primaryKey : relation.columns.map((c) => c.name);
  const name = `${relation.schema}.${relation.table}`;
  const head = (op: string): [string, string][] => [
    ["op", escapeJson(op)],
    ["schema", escapeJson(relation.schema)],
    ["table", escapeJson(relation.table)],
  ];
  const channelOf = (tuple: Tuple): string | Unroutable => {
    let channel = "";
    for (const part of route.template) {
      if (typeof part === "string") {
        channel += part;
        continue;
      }
      const value = tuple.text(part.column);
      if (value === undefined)
        return { table: name, reason: `its channel template's column ${part.column} is not in the WAL for this change (add it to the replica identity)` };
      if (value === null) return { table: name, reason: `its channel template's column ${part.column} is NULL` };
      channel += value;
    }
    return CHANNEL_PATTERN.test(channel)
      ? channel
      : { table: name, reason: `its channel ${JSON.stringify(channel.slice(0, 140))} is not a valid channel name` };
  };
  const keyOf = (tuple: Tuple): string | null => {
    const pairs: [string, string][] = [];
    for (const k of keyColumns) {
      const v = tuple.json(k);
      if (v === undefined) return null;
      pairs.push([k, v]);
    }
    return buildObject(pairs);
  };
  const emit = (event: ChangeEventText["event"], channel: string | Unroutable, pairs: [string, string][]) => {
    if (typeof channel !== "string") unroutable.push(channel);
    else events.push({ channel, event, data: buildObject(pairs), retain: route.retain });
  };
  /** What the WAL holds of an old tuple: all of it, or (a key-only tuple) the replica identity's columns; the rest is unknown. */
  const oldTuple = (values: TupleValue[], keyOnly: boolean): Tuple =>
    new Tuple(relation, keyOnly ? values.map((v, i) => (relation.columns[i]!.key ? v : UNCHANGED)) : values, types);
  /** An old tuple's `old` text: the whole row, or the identity's columns of a key-only one. */
  const oldJson = (tuple: Tuple, keyOnly: boolean): string =>
    keyOnly ? buildObject(relation.columns.filter((c) => c.key).map((c): [string, string] => [c.name, tuple.json(c.name) ?? "null"])) : tuple.row().json;

  if (change.op === "insert") {
    const n = new Tuple(relation, change.new, types);
    emit("insert", channelOf(n), [...head("INSERT"), ["key", keyOf(n) ?? "{}"], ["new", n.row().json], ["old", "null"]]);
  } else if (change.op === "delete") {
    const o = oldTuple(change.old, change.oldIsKey);
    emit("delete", channelOf(o), [...head("DELETE"), ["key", keyOf(o) ?? "{}"], ["new", "null"], ["old", oldJson(o, change.oldIsKey)]]);
  } else {
    // No old tuple: the key did not change (the WAL logs the old key when it does).
    const o = change.old ? oldTuple(change.old, change.oldIsKey) : null;
    // Under REPLICA IDENTITY FULL the old tuple holds every value, the unchanged TOASTed ones too.
    const n = new Tuple(relation, change.old && !change.oldIsKey ? fillFrom(change.new, change.old) : change.new, types);
    const newRow = n.row();
    const newKey = keyOf(n);
    const oldKey = o ? keyOf(o) : newKey;
    const newChannel = channelOf(n);
    // The old row's channel, when the WAL holds its template columns; else the row stays where it is.
    const oldChannel = o ? channelOf(o) : newChannel;
    const moved = typeof oldChannel === "string" && typeof newChannel === "string" && oldChannel !== newChannel;
    const old = o ? oldJson(o, change.oldIsKey) : "null";
    const unchanged: [string, string][] = newRow.unchanged.length > 0 ? [["unchanged", `[${newRow.unchanged.map(escapeJson).join(",")}]`]] : [];
    if (oldKey === newKey && !moved) {
      emit("update", newChannel, [...head("UPDATE"), ["key", newKey ?? "{}"], ["new", newRow.json], ["old", old], ...unchanged]);
    } else {
      emit("delete", typeof oldChannel === "string" ? oldChannel : newChannel, [...head("DELETE"), ["key", oldKey ?? "{}"], ["new", "null"], ["old", old]]);
      emit("insert", newChannel, [...head("INSERT"), ["key", newKey ?? "{}"], ["new", newRow.json], ["old", "null"], ...unchanged]);
    }
  }
  return { events, unroutable };
}

/** `values` with their unchanged (not in the WAL) columns taken from `from`, where it has them. */
function fillFrom(values: TupleValue[], from: TupleValue[]): TupleValue[] {
  return values.map((v, i) => (v === UNCHANGED && from[i] !== undefined ? from[i]! : v));
}
