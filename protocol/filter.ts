/**
 * Row filters: what a subscriber asks for with `?filter=<JSON>`, evaluated by the channel for each
 * socket (events, replay and snapshot alike). The JSON maps top-level columns to conditions, all
 * ANDed: `{"done":{"eq":false},"priority":{"gte":3},"id":{"in":[1,2,3]}}`.
 */
import { parseJson } from "./json.ts";

/** A comparison a filter can make. */
export type FilterOp = "eq" | "neq" | "lt" | "lte" | "gt" | "gte" | "in";

/**
 * A value a filter compares with. Integers past 2^53 are bigints (filters and row data are both
 * read with parseJson(text, "bigint"), so `{"id":{"eq":9007199254740993}}` matches that id and not
 * its neighbour); decimals with more than 15 significant digits are compared as their text.
 */
export type FilterValue = string | number | bigint | boolean | null;

/** Conditions per column; every one must hold. */
export type RowFilter = Record<string, Partial<Record<FilterOp, FilterValue | FilterValue[]>>>;

/** Largest filter, in bytes of JSON (it lives in the socket's 16 KiB attachment). */
export const MAX_FILTER_BYTES = 2048;
const MAX_CONDITIONS = 16;
const MAX_IN_VALUES = 100;
const OPS = new Set<FilterOp>(["eq", "neq", "lt", "lte", "gt", "gte", "in"]);

/** Parses and checks a filter; the message names what is wrong. */
export function parseFilter(text: string): { ok: true; filter: RowFilter } | { ok: false; message: string } {
  if (new TextEncoder().encode(text).byteLength > MAX_FILTER_BYTES) return { ok: false, message: `filter is larger than ${MAX_FILTER_BYTES} bytes` };
  let value: unknown;
  try {
    value = parseJson(text, "bigint");
  } catch {
    return { ok: false, message: 'filter is not JSON; expected {"column":{"op":value}} with op eq, neq, lt, lte, gt, gte or in' };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { ok: false, message: 'filter must be an object {"column":{"op":value}}' };
  let conditions = 0;
  for (const [column, ops] of Object.entries(value)) {
    if (typeof ops !== "object" || ops === null || Array.isArray(ops))
      return { ok: false, message: `filter.${column} must be an object of conditions, e.g. {"eq":1}` };
    for (const [op, operand] of Object.entries(ops)) {
      if (!OPS.has(op as FilterOp))
        return { ok: false, message: `filter.${column}: unknown operator ${JSON.stringify(op)} (use eq, neq, lt, lte, gt, gte, in)` };
      if (++conditions > MAX_CONDITIONS) return { ok: false, message: `filter has more than ${MAX_CONDITIONS} conditions` };
      if (op === "in") {
        if (!Array.isArray(operand) || operand.length > MAX_IN_VALUES || !operand.every(isFilterValue)) {
          return { ok: false, message: `filter.${column}.in must be an array of at most ${MAX_IN_VALUES} strings, numbers, booleans or nulls` };
        }
      } else if (!isFilterValue(operand)) {
        return { ok: false, message: `filter.${column}.${op} must be a string, number, boolean or null` };
      } else if ((op === "lt" || op === "lte" || op === "gt" || op === "gte") && typeof operand !== "number" && typeof operand !== "string") {
        return { ok: false, message: `filter.${column}.${op} compares numbers or strings` };
      }
    }
  }
  if (conditions === 0) return { ok: false, message: "filter has no conditions" };
  return { ok: true, filter: value as RowFilter };
}

function isFilterValue(v: unknown): v is FilterValue {
  return (
    v === null || typeof v === "boolean" || typeof v === "bigint" || (typeof v === "number" && Number.isFinite(v)) || (typeof v === "string" && v.length <= 256)
  );
}

const isNumeric = (v: unknown): v is number | bigint => typeof v === "number" || typeof v === "bigint";

/** Equality, with a number and a bigint equal when their values are (JS compares those exactly). */
function same(a: unknown, b: unknown): boolean {
  // eslint-disable-next-line eqeqeq -- number == bigint compares the mathematical values
  return a === b || (isNumeric(a) && isNumeric(b) && a === b);
}

function holds(op: FilterOp, actual: unknown, operand: FilterValue | FilterValue[]): boolean {
  switch (op) {
    case "eq":
      return same(actual, operand) || (actual === undefined && operand === null);
    case "neq":
      // Like SQL, a missing or null column matches no comparison but `eq: null`.
      return actual !== undefined && actual !== null && !same(actual, operand);
    case "in":
      return (operand as FilterValue[]).some((v) => same(actual, v));
    default: {
      const numbers = isNumeric(actual) && isNumeric(operand);
      if (!numbers && !(typeof actual === "string" && typeof operand === "string")) return false;
      const a = actual as number | bigint | string;
      const b = operand as number | bigint | string;
      return op === "lt" ? a < b : op === "lte" ? a <= b : op === "gt" ? a > b : a >= b;
    }
  }
}

/** True when `row` (top-level columns) satisfies every condition. */
export function matchesRow(filter: RowFilter, row: unknown): boolean {
  if (typeof row !== "object" || row === null) return false;
  for (const [column, ops] of Object.entries(filter)) {
    const actual = (row as Record<string, unknown>)[column];
    for (const [op, operand] of Object.entries(ops)) if (!holds(op as FilterOp, actual, operand!)) return false;
  }
  return true;
}

/**
 * True when an event's data passes: change events are judged on `new` (INSERT), `old` (DELETE),
 * or either (UPDATE: so a subscriber also sees a row leave its filter); a TRUNCATE always passes;
 * other events are judged on their data's top-level fields.
 */
export function matchesEvent(filter: RowFilter, data: unknown): boolean {
  if (typeof data !== "object" || data === null) return false;
  const d = data as { op?: unknown; new?: unknown; old?: unknown };
  switch (d.op) {
    case "INSERT":
      return matchesRow(filter, d.new);
    case "DELETE":
      return matchesRow(filter, d.old);
    case "UPDATE":
      return matchesRow(filter, d.new) || matchesRow(filter, d.old);
    case "TRUNCATE":
      return true;
    default:
      return matchesRow(filter, data);
  }
}

/**
 * {@link matchesEvent} for data as JSON text (as the channel holds it), read with big integers
 * exact. Data that cannot be read matches nothing: it fails this socket's match, never the batch.
 */
export function matchesEventText(filter: RowFilter, data: string): boolean {
  return matchesEvent(filter, readData(data));
}

/** {@link matchesRow} for a row as JSON text. */
export function matchesRowText(filter: RowFilter, row: string | null): boolean {
  return row !== null && matchesRow(filter, readData(row));
}

/** Event data for filtering: parsed with big integers exact, or undefined if it cannot be. */
export function readData(text: string): unknown {
  try {
    return parseJson(text, "bigint");
  } catch {
    return undefined;
  }
}
