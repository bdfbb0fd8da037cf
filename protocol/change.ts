/**
 * Change events read as text: what the Worker needs to know about a change event (its op, table,
 * row key and new row) without turning its data into JS values, so that a key like
 * `{"id":9007199254740993}` stays that key and a deeply nested row costs nothing to look at.
 */
import { compactJson, decodeString, jsonMembers } from "./json.ts";
import type { ChangeOp, MarkerReason } from "./wire.ts";

/** A change event's data, its parts as raw JSON texts. */
export interface ChangeText {
  op: ChangeOp;
  schema: string;
  table: string;
  /** The key object's compact JSON text (see compactJson): equal keys have equal text. */
  key: string | null;
  /** The new row's raw JSON text, when the data has one. */
  new: string | null;
  /** The data is a marker (its row could not be carried). */
  marker: boolean;
  /**
   * Columns the new row lacks because the WAL did not carry them (an update that left a TOASTed
   * value unchanged, decoded from a publication), or null.
   */
  unchanged: string[] | null;
}

const CHANGE_MEMBERS = new Set(["op", "schema", "table", "key", "new", "oversized", "unstorable", "unchanged"]);
const OPS = new Set<string>(["INSERT", "UPDATE", "DELETE", "TRUNCATE"]);

/** A string member's value, or null. */
function stringMember(members: Map<string, string>, name: string): string | null {
  const raw = members.get(name);
  return raw !== undefined && raw.charCodeAt(0) === 0x22 ? decodeString(raw) : null;
}

/**
 * Reads `data` (valid JSON text) as a change event: `{op, schema, table, key, new, ...}` with op
 * one of INSERT, UPDATE, DELETE, TRUNCATE. Null for any other data.
 */
export function readChange(data: string): ChangeText | null {
  const members = jsonMembers(data, CHANGE_MEMBERS);
  if (!members) return null;
  const op = stringMember(members, "op");
  const schema = stringMember(members, "schema");
  const table = stringMember(members, "table");
  if (op === null || !OPS.has(op) || schema === null || table === null) return null;
  const key = members.get("key");
  const row = members.get("new");
  return {
    op: op as ChangeOp,
    schema,
    table,
    key: key !== undefined && key.charCodeAt(0) === 0x7b ? compactJson(key) : null,
    new: row === undefined || row === "null" ? null : row,
    marker: members.get("oversized") === "true" || members.get("unstorable") === "true",
    unchanged: unchangedColumns(members.get("unchanged")),
  };
}

function unchangedColumns(raw: string | undefined): string[] | null {
  if (raw === undefined || raw.charCodeAt(0) !== 0x5b /* [ */) return null;
  const names = JSON.parse(raw) as unknown;
  return Array.isArray(names) && names.every((n) => typeof n === "string") ? names : null;
}

/**
 * A change's data with the columns its new row lacked (`unchanged`) filled from `base`, the row
 * as it was before (the retained version): the new row takes `base`'s column order, with the new
 * values where it has them, and `unchanged` is dropped. The envelope keeps json_build_object's
 * `"k" : v` spelling, the row to_json's. Null when `base` lacks one of those columns too.
 */
export function fillUnchanged(data: string, base: string): string | null {
  const members = jsonMembers(data);
  const change = readChange(data);
  const row = change?.new ? jsonMembers(change.new) : null;
  const before = jsonMembers(base);
  if (!members || !change?.unchanged || !row || !before) return null;
  const filled: string[] = [];
  for (const [name, value] of before) {
    const now = row.get(name) ?? (change.unchanged.includes(name) ? value : undefined);
    if (now !== undefined) filled.push(`${JSON.stringify(name)}:${now}`);
  }
  for (const [name, value] of row) if (!before.has(name)) filled.push(`${JSON.stringify(name)}:${value}`);
  if (change.unchanged.some((name) => !before.has(name))) return null;
  const envelope: string[] = [];
  for (const [name, value] of members) {
    if (name === "unchanged") continue;
    envelope.push(`${JSON.stringify(name)} : ${name === "new" ? `{${filled.join(",")}}` : value}`);
  }
  return `{${envelope.join(", ")}}`;
}

/** The identity of a row across events: schema, table and the key's compact text. */
export function rowKey(schema: string, table: string, key: string): string {
  return `${schema}.${table}:${key}`;
}

/** Bytes of `text` in UTF-8, counted without encoding it. */
export function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) bytes += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      bytes += 2; // a surrogate pair: 4 bytes for 2 units
      i++;
    } else bytes += 2;
  }
  return bytes;
}

/**
 * The JSON text of the marker standing in for `data` (see {@link EventMarker}): the reason and
 * size, and for a change event its op, schema, table and key, copied as text (the key keeps its
 * exact digits). `bytes` defaults to the data's UTF-8 size.
 */
export function markerJson(data: string, reason: MarkerReason, bytes = utf8Length(data)): string {
  const flag = reason === "unstorable" ? '"unstorable":true' : '"oversized":true';
  let text = `{${flag},"reason":${JSON.stringify(reason)},"bytes":${bytes}`;
  const change = readChange(data);
  if (change) {
    text += `,"op":${JSON.stringify(change.op)},"schema":${JSON.stringify(change.schema)},"table":${JSON.stringify(change.table)}`;
    if (change.key !== null) text += `,"key":${change.key}`;
  }
  return `${text}}`;
}

/** A row a client knows by its key: its table and key (the row itself may be too large to carry). */
export interface RowRef {
  schema: string;
  table: string;
  key: Record<string, unknown>;
}

/**
 * A client's copy of a channel's retained rows: each row by its identity (schema, table, key),
 * and the rows that exist but were too large to carry (`oversized`: fetch them from your app).
 */
export interface RowState<Row = Record<string, unknown>> {
  rows: Map<string, Row>;
  oversized: Map<string, RowRef>;
}

/** A parsed key's text, for a row's identity (bigints, from `numbers: "bigint"`, as their digits). */
export function keyText(key: unknown): string {
  return JSON.stringify(key, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v)) ?? "null";
}

/** The state a snapshot describes. */
export function stateFromSnapshot<Row>(
  rows: readonly { schema: string; table: string; key: Record<string, unknown>; row: unknown; oversized?: boolean }[],
): RowState<Row> {
  const state: RowState<Row> = { rows: new Map(), oversized: new Map() };
  for (const r of rows) {
    const id = rowKey(r.schema, r.table, keyText(r.key));
    if (r.oversized || r.row === null) state.oversized.set(id, { schema: r.schema, table: r.table, key: r.key });
    else state.rows.set(id, r.row as Row);
  }
  return state;
}

/**
 * Applies one event's data to `state` (in place), as the channel applies it to what it retains:
 * INSERT and UPDATE keep the new row, DELETE drops it, TRUNCATE drops the table's rows; a marker
 * for a row (too large to carry) keeps the row's key in `oversized` instead. Other data changes
 * nothing. Returns whether anything changed.
 */
export function applyChange<Row>(state: RowState<Row>, data: unknown): boolean {
  if (typeof data !== "object" || data === null) return false;
  const d = data as { op?: unknown; schema?: unknown; table?: unknown; key?: unknown; new?: unknown; oversized?: unknown; unstorable?: unknown };
  if (typeof d.schema !== "string" || typeof d.table !== "string" || typeof d.op !== "string") return false;
  if (d.op === "TRUNCATE") {
    const prefix = `${d.schema}.${d.table}:`;
    let changed = false;
    for (const map of [state.rows, state.oversized] as Map<string, unknown>[]) {
      for (const k of [...map.keys()]) if (k.startsWith(prefix)) changed = map.delete(k) || changed;
    }
    return changed;
  }
  if (typeof d.key !== "object" || d.key === null) return false;
  const id = rowKey(d.schema, d.table, keyText(d.key));
  state.rows.delete(id);
  state.oversized.delete(id);
  if (d.op === "DELETE") return true;
  if (d.oversized === true || d.unstorable === true) state.oversized.set(id, { schema: d.schema, table: d.table, key: d.key as Record<string, unknown> });
  else if (typeof d.new === "object" && d.new !== null) state.rows.set(id, d.new as Row);
  return true;
}
