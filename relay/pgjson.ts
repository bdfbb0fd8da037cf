/**
 * Postgres's `to_json(value)` rebuilt from the value's text form, for capture that decodes the
 * watched tables' own changes from the WAL with `pgoutput`.
 *
 * pgoutput sends every column as the text its type's output function writes, run in the
 * walsender with the replication connection's settings. The trigger modes send `to_json(row)`,
 * which Postgres builds from the same output functions plus a few rules of its own
 * (src/backend/utils/adt/json.c, datum_to_json_internal): booleans and numbers are bare, dates and
 * timestamps are re-encoded in XSD style, json/jsonb are embedded, arrays and composites are
 * walked element by element, everything else is the output text as a JSON string. This module
 * applies those rules to the text, so the two capture paths carry the same JSON text, digit for
 * digit: numbers are copied as their characters and never become JS numbers, json values are
 * copied and never parsed.
 *
 * The text depends on the session that produced it: see {@link TEXT_OUTPUT_SETTINGS}.
 */
import type { Queryable } from "./serial.ts";

/**
 * Settings the text form must have been written under: the relay's replication connection is to
 * set them (textOutputOptions), as the walsender runs the output functions with that connection's
 * settings. The conversion depends on them:
 * - DateStyle ISO: dates and timestamps are parsed from ISO text (`2024-01-01 00:00:00+00`) to
 *   write XSD (`2024-01-01T00:00:00+00:00`), as JsonEncodeDateTime does whatever DateStyle is.
 *   The `MDY` half only steers input and does not change output.
 * - TimeZone UTC: a timestamptz is shown at this zone's offset. to_json shows it at the writing
 *   session's offset, so the trigger modes match this only when their writers use UTC too.
 * - IntervalStyle postgres, bytea_output hex: interval and bytea values become JSON strings of their
 *   text, which these settings shape.
 * - extra_float_digits 1 (the default since Postgres 12): float4/float8 are written with the
 *   shortest digits that read back exactly (float8out_internal), which to_json copies as a number.
 * These are Postgres's defaults but TimeZone; to_json in a trigger runs with the writing
 * session's settings, so the two paths agree as long as writers keep them. lc_monetary (money) and
 * search_path (reg* types) also shape some output texts; they are left at the database's
 * defaults, as writers' sessions have them.
 */
export const TEXT_OUTPUT_SETTINGS = {
  DateStyle: "ISO, MDY",
  TimeZone: "UTC",
  IntervalStyle: "postgres",
  extra_float_digits: "1",
  bytea_output: "hex",
} as const;

/**
 * {@link TEXT_OUTPUT_SETTINGS} as a libpq `options` value (`-c name=value ...`, spaces and
 * backslashes escaped), for a pg.Client's `options`: startup settings apply to a walsender too.
 */
export function textOutputOptions(): string {
  return Object.entries(TEXT_OUTPUT_SETTINGS)
    .map(([name, value]) => `-c ${name}=${value.replace(/[\\ ]/g, "\\$&")}`)
    .join(" ");
}

/** One attribute of a composite type, as composite_to_json names it. */
export interface PgAttribute {
  readonly name: string;
  readonly type: PgType;
}

/**
 * How to_json writes a type's values (json_categorize_type's JsonTypeCategory), domains already
 * resolved to their base type (it calls getBaseType first):
 * - bool: `true`/`false`.
 * - numeric: int2/int4/int8/float4/float8/numeric; the text bare when it starts like a number,
 *   else quoted (NaN, Infinity, -Infinity).
 * - date, timestamp, timestamptz: re-encoded in XSD style, quoted.
 * - json: json and jsonb, embedded as their text.
 * - array: a true array type (get_element_type), with its element type and the delimiter
 *   array_out writes (the element type's typdelim: `;` for box, `,` for every other built-in), or
 *   a space for int2vector and oidvector, whose own output functions write them.
 * - composite: attributes in order, dropped ones left out (composite_to_json skips them).
 * - cast: a non-built-in type with an explicit cast function to json; to_json calls that function,
 *   which cannot be reproduced from the text (see {@link textToJson}).
 * - other: the output text as a JSON string (escape_json).
 */
export type PgTypeKind =
  | { readonly category: "bool" | "numeric" | "date" | "timestamp" | "timestamptz" | "json" | "cast" | "other" }
  | { readonly category: "array"; readonly element: PgType; readonly delimiter: string }
  | { readonly category: "composite"; readonly attributes: readonly PgAttribute[] };

/** JSON category of a value's type. */
export type JsonCategory = PgTypeKind["category"];

/** A type as the conversion needs it. A domain keeps its own oid and name and has its base's kind. */
export interface PgType {
  readonly oid: number;
  /** `typname` for pg_catalog types, else `schema.typname`: for messages only. */
  readonly name: string;
  readonly kind: PgTypeKind;
}

/** The text did not have the form the type's output function writes under TEXT_OUTPUT_SETTINGS. */
export class PgJsonError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PgJsonError";
  }
}

// ---------------------------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------------------------

/**
 * `to_json(value)::text` for a value of `type` whose output text (under TEXT_OUTPUT_SETTINGS) is
 * `text`; null is SQL NULL and gives `null`.
 *
 * Category "cast" is the one case the text cannot answer: to_json calls the type's own cast to
 * json (hstore's, for example), whose result need not be derivable from the output text. Such a
 * value becomes the JSON string of its text, which is what to_json writes for the same type
 * without the cast.
 *
 * Throws PgJsonError when the text is not of the form the output function writes (a text from
 * other settings, or a composite whose attributes changed since the type was loaded).
 * Recursion follows the type's own nesting only (array elements, composite attributes); array
 * dimensions are walked in a loop and json text is copied, never parsed.
 */
export function textToJson(text: string | null, type: PgType): string {
  return text === null ? "null" : valueToJson(text, type);
}

/**
 * `to_json(row)::text` for a row given as its columns' output texts (null for SQL NULL): an
 * object in column order, `"name":value` joined by `,` with no spaces, as composite_to_json
 * writes it (to_json of a row and row_to_json share it). The columns are those of pgoutput's
 * Relation message; it leaves out generated columns unless the publication publishes them, which
 * to_json(t.*) includes, and an unchanged TOASTed value (kind `u`) has no text to pass here.
 */
export function rowToJson(values: readonly (string | null)[], columns: readonly { readonly name: string; readonly type: PgType }[]): string {
  if (values.length !== columns.length) {
    throw new PgJsonError(`a row of ${values.length} values for ${columns.length} columns`);
  }
  let out = "{";
  for (let i = 0; i < columns.length; i++) {
    const column = columns[i]!;
    if (i > 0) out += ",";
    out += escapeJson(column.name);
    out += ":";
    out += textToJson(values[i] ?? null, column.type);
  }
  return `${out}}`;
}

/** Characters escape_json rewrites: the C0 controls, `"` and `\`. Everything else is copied. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what JSON strings must escape
const NEEDS_ESCAPE = /[\u0000-\u001f"\\]/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: as above
const NEEDS_ESCAPE_ALL = /[\u0000-\u001f"\\]/g;
/** escape_json_char: five short escapes, the other controls as \u00XX in lowercase hex (%04x). */
const ESCAPES: readonly string[] = Array.from({ length: 0x20 }, (_, c) => {
  const short: Record<number, string> = { 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r" };
  return short[c] ?? `\\u${c.toString(16).padStart(4, "0")}`;
});
const escapeChar = (c: string): string => (c === '"' ? '\\"' : c === "\\" ? "\\\\" : ESCAPES[c.charCodeAt(0)]!);

/**
 * A JSON string literal exactly as Postgres's escape_json writes it. It works on bytes and leaves
 * every non-ASCII byte alone, so in UTF-16 it touches only the same ASCII characters (U+2028,
 * U+007F and the rest are copied as they are).
 */
export function escapeJson(text: string): string {
  return NEEDS_ESCAPE.test(text) ? `"${text.replace(NEEDS_ESCAPE_ALL, escapeChar)}"` : `"${text}"`;
}

function valueToJson(text: string, type: PgType): string {
  const kind = type.kind;
  switch (kind.category) {
    case "bool":
      // boolout writes t or f; datum_to_json_internal writes true or false.
      if (text === "t") return "true";
      if (text === "f") return "false";
      throw malformed(text, type);
    case "numeric":
      // datum_to_json_internal: bare when the text starts with a digit or '-' and a digit, else
      // quoted without escaping (NaN, Infinity, -Infinity need none). Older releases asked
      // IsValidJsonNumber and escape_json instead, which answer the same for these types' texts.
      return isDigit(text.charCodeAt(0)) || (text.charCodeAt(0) === 0x2d && isDigit(text.charCodeAt(1))) ? text : `"${text}"`;
    case "date":
      // JsonEncodeDateTime writes a date with EncodeDateOnly(USE_XSD_DATES), which is the ISO
      // form (`0044-03-15 BC` included); infinities come from EncodeSpecialDate in both.
      if (DATE_ISO.test(text) || text === "infinity" || text === "-infinity") return `"${text}"`;
      throw malformed(text, type);
    case "timestamp":
    case "timestamptz":
      return `"${timestampToXsd(text, type)}"`;
    case "json":
      // JSON and JSONB output is JSON already: copied as it is, whitespace and all.
      return text;
    case "array":
      return arrayToJson(text, type, kind.element, kind.delimiter);
    case "composite":
      return compositeToJson(text, type, kind.attributes);
    case "cast":
    case "other":
      return escapeJson(text);
  }
}

const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

/** date_out in ISO style: zero-padded year of at least four digits, ` BC` for years <= 0. */
const DATE_ISO = /^\d{4,}-\d\d-\d\d(?: BC)?$/;

/**
 * timestamp_out/timestamptz_out in ISO style: date, a space, the time with AppendTimestampSeconds'
 * fraction (trailing zeros dropped), then for timestamptz EncodeTimezone's offset, then ` BC`.
 */
const TIMESTAMP_ISO = /^(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)(?:([+-]\d\d)(:\d\d)?(:\d\d)?)?( BC)?$/;

/**
 * EncodeDateTime in USE_XSD_DATES style from its USE_ISO_DATES output: the two differ in the
 * separator (`T` for the space) and in EncodeTimezone, which in XSD style always writes the
 * minutes (`+00:00` where ISO writes `+00`; an offset with seconds is `+HH:MM:SS` in both).
 * timestamp_out writes no offset; timestamptz_out writes one unless timestamp2tm had no zone
 * (tm_isdst < 0), in which case JsonEncodeDateTime omits it too. Infinities come from
 * EncodeSpecialTimestamp in both.
 */
function timestampToXsd(text: string, type: PgType): string {
  if (text === "infinity" || text === "-infinity") return text;
  const m = TIMESTAMP_ISO.exec(text);
  if (!m || (type.kind.category === "timestamp" && m[3] !== undefined)) throw malformed(text, type);
  const [, date, time, hours, minutes, seconds, bc] = m;
  const zone = hours === undefined ? "" : `${hours}${minutes ?? ":00"}${seconds ?? ""}`;
  return `${date}T${time}${zone}${bc ?? ""}`;
}

/**
 * array_to_json_internal from array_out's text: `[lb:ub]...=` bounds decoration dropped (written
 * only when a lower bound is not 1; to_json never shows bounds), one JSON array per `{}` level
 * (array_dim_to_json), elements converted by the element type's category, unquoted NULL as null.
 * Elements are quoted by array_out when empty, `NULL` in any case, or holding `"`, `\`, `{`, `}`,
 * the delimiter or white space; inside quotes `\` escapes the next character (array_in's rules).
 */
function arrayToJson(text: string, type: PgType, element: PgType, delimiter: string): string {
  let i = 0;
  const first = text.charCodeAt(0);
  if (first === 0x5b /* [ */) {
    i = text.indexOf("=") + 1;
    if (i === 0) throw malformed(text, type);
  } else if (first !== 0x7b /* { */) {
    if (delimiter === VECTOR_DELIMITER) return vectorToJson(text, type, element);
    throw malformed(text, type);
  }
  const n = text.length;
  let out = "";
  let depth = 0;
  while (i < n) {
    const c = text[i];
    if (c === "{") {
      out += "[";
      depth++;
      i++;
      continue;
    }
    if (depth === 0) throw malformed(text, type); // no `{` where the array starts
    if (c === "}") {
      out += "]";
      depth--;
      i++;
      if (depth === 0) break;
    } else {
      // One element: up to the next delimiter or `}` outside quotes.
      let value = "";
      let quoted = false;
      let inQuotes = false;
      let from = i;
      for (; i < n; i++) {
        const ch = text[i];
        if (ch === "\\") {
          value += text.slice(from, i);
          i++;
          if (i >= n) throw malformed(text, type);
          from = i; // the escaped character is kept with the next slice
        } else if (ch === '"') {
          value += text.slice(from, i);
          from = i + 1;
          inQuotes = !inQuotes;
          quoted = true;
        } else if (!inQuotes && (ch === delimiter || ch === "}")) {
          break;
        } else if (!inQuotes && ch === "{") {
          throw malformed(text, type);
        }
      }
      if (inQuotes || i >= n) throw malformed(text, type);
      value += text.slice(from, i);
      if (!quoted && value.length === 0) throw malformed(text, type);
      out += !quoted && value.length === 4 && value.toUpperCase() === "NULL" ? "null" : valueToJson(value, element);
    }
    if (text[i] === delimiter) {
      out += ",";
      i++;
      // A delimiter is followed by an element or `{`, never by `}`.
      if (text[i] === "}") throw malformed(text, type);
    }
  }
  if (depth !== 0 || i !== n) throw malformed(text, type);
  return out;
}

/**
 * The delimiter given to an array type whose output function is not array_out. Core has two,
 * int2vector and oidvector: arrays to to_json (their typsubscript is array_subscript_handler, so
 * get_element_type sees one), written by int2vectorout and oidvectorout as the elements separated
 * by single spaces, without braces.
 */
const VECTOR_DELIMITER = " ";

/** array_to_json_internal of an int2vector or oidvector, from its output text. */
function vectorToJson(text: string, type: PgType, element: PgType): string {
  if (text.length === 0) return "[]";
  let out = "[";
  let from = 0;
  for (;;) {
    const space = text.indexOf(" ", from);
    const item = text.slice(from, space < 0 ? text.length : space);
    if (item.length === 0) throw malformed(text, type);
    if (from > 0) out += ",";
    out += valueToJson(item, element);
    if (space < 0) return `${out}]`;
    from = space + 1;
  }
}

/**
 * composite_to_json from record_out's text: `(v1,v2,...)` with one value per attribute that is
 * not dropped (record_out skips dropped ones as composite_to_json does), nothing for NULL, and a
 * value quoted when empty or holding `"`, `\`, `(`, `)`, `,` or white space, with `"` and `\`
 * doubled inside. Read by record_in's rules: `\` escapes the next character anywhere, `""` inside
 * quotes is a quote. Written as `{"name":value,...}` without spaces.
 */
function compositeToJson(text: string, type: PgType, attributes: readonly PgAttribute[]): string {
  const n = text.length;
  if (text[0] !== "(" || text[n - 1] !== ")") throw malformed(text, type);
  let out = "{";
  let i = 1;
  for (let k = 0; k < attributes.length; k++) {
    const attribute = attributes[k]!;
    if (k > 0) {
      if (text[i] !== ",") throw malformed(text, type, `fewer values than its ${attributes.length} attributes`);
      i++;
      out += ",";
    }
    out += escapeJson(attribute.name);
    out += ":";
    let value = "";
    let present = false;
    let inQuotes = false;
    let from = i;
    for (; i < n; i++) {
      const ch = text[i];
      if (ch === "\\") {
        value += text.slice(from, i);
        i++;
        from = i;
        present = true;
      } else if (ch === '"') {
        value += text.slice(from, i);
        if (inQuotes && text[i + 1] === '"') {
          i++; // `""` inside quotes: one quote, kept with the next slice
          from = i;
        } else {
          from = i + 1;
          inQuotes = !inQuotes;
        }
        present = true;
      } else if (!inQuotes && (ch === "," || ch === ")")) {
        break;
      } else {
        present = true;
      }
    }
    if (inQuotes || i >= n) throw malformed(text, type);
    value += text.slice(from, i);
    out += present ? valueToJson(value, attribute.type) : "null";
  }
  if (i !== n - 1) throw malformed(text, type, `more values than its ${attributes.length} attributes`);
  return `${out}}`;
}

function malformed(text: string, type: PgType, why?: string): PgJsonError {
  const shown = text.length > 80 ? `${text.slice(0, 80)}...` : text;
  return new PgJsonError(`not the output text of a ${type.name} value${why ? ` (${why})` : ""}: ${JSON.stringify(shown)}`);
}

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

/** Oids below this are Postgres's own; json_categorize_type looks for a json cast only above. */
const FIRST_NORMAL_OBJECT_ID = 16384;

/** The scalar categories json_categorize_type gives built-in types by oid; the rest are "other". */
const SCALAR_CATEGORIES: ReadonlyMap<number, JsonCategory> = new Map<number, JsonCategory>([
  [16, "bool"],
  [20, "numeric"], // int8
  [21, "numeric"], // int2
  [23, "numeric"], // int4
  [700, "numeric"], // float4
  [701, "numeric"], // float8
  [1700, "numeric"],
  [1082, "date"],
  [1114, "timestamp"],
  [1184, "timestamptz"],
  [114, "json"],
  [3802, "json"], // jsonb: JSONTYPE_JSON for to_json (JSONTYPE_JSONB is for to_jsonb only)
]);

function scalarKind(oid: number, jsonCast: boolean): PgTypeKind {
  const category = SCALAR_CATEGORIES.get(oid);
  if (category === "bool" || category === "numeric" || category === "date" || category === "timestamp" || category === "timestamptz" || category === "json") {
    return { category };
  }
  return { category: oid >= FIRST_NORMAL_OBJECT_ID && jsonCast ? "cast" : "other" };
}

/**
 * Built-in types (their oids are fixed in pg_type.dat and the same in every Postgres from 13 on),
 * so that tables of common types need no catalog query: [oid, name, array oid, array name].
 * test/relay/pgjson.test.ts checks every entry against the catalog.
 */
const BUILTIN_TYPES: readonly (readonly [number, string, number, string])[] = [
  [16, "bool", 1000, "_bool"],
  [17, "bytea", 1001, "_bytea"],
  [18, "char", 1002, "_char"],
  [19, "name", 1003, "_name"],
  [20, "int8", 1016, "_int8"],
  [21, "int2", 1005, "_int2"],
  [23, "int4", 1007, "_int4"],
  [25, "text", 1009, "_text"],
  [26, "oid", 1028, "_oid"],
  [114, "json", 199, "_json"],
  [142, "xml", 143, "_xml"],
  [600, "point", 1017, "_point"],
  [601, "lseg", 1018, "_lseg"],
  [602, "path", 1019, "_path"],
  [603, "box", 1020, "_box"],
  [604, "polygon", 1027, "_polygon"],
  [628, "line", 629, "_line"],
  [650, "cidr", 651, "_cidr"],
  [700, "float4", 1021, "_float4"],
  [701, "float8", 1022, "_float8"],
  [718, "circle", 719, "_circle"],
  [774, "macaddr8", 775, "_macaddr8"],
  [790, "money", 791, "_money"],
  [829, "macaddr", 1040, "_macaddr"],
  [869, "inet", 1041, "_inet"],
  [1042, "bpchar", 1014, "_bpchar"],
  [1043, "varchar", 1015, "_varchar"],
  [1082, "date", 1182, "_date"],
  [1083, "time", 1183, "_time"],
  [1114, "timestamp", 1115, "_timestamp"],
  [1184, "timestamptz", 1185, "_timestamptz"],
  [1186, "interval", 1187, "_interval"],
  [1266, "timetz", 1270, "_timetz"],
  [1560, "bit", 1561, "_bit"],
  [1562, "varbit", 1563, "_varbit"],
  [1700, "numeric", 1231, "_numeric"],
  [2950, "uuid", 2951, "_uuid"],
  [3220, "pg_lsn", 3221, "_pg_lsn"],
  [3614, "tsvector", 3643, "_tsvector"],
  [3615, "tsquery", 3645, "_tsquery"],
  [3802, "jsonb", 3807, "_jsonb"],
  [3904, "int4range", 3905, "_int4range"],
  [3906, "numrange", 3907, "_numrange"],
  [3908, "tsrange", 3909, "_tsrange"],
  [3910, "tstzrange", 3911, "_tstzrange"],
  [3912, "daterange", 3913, "_daterange"],
  [3926, "int8range", 3927, "_int8range"],
  [4072, "jsonpath", 4073, "_jsonpath"],
  [5069, "xid8", 271, "_xid8"],
];

/** box is the one built-in type whose typdelim is not a comma: its output holds commas. */
const BOX_OID = 603;

const BUILTINS: ReadonlyMap<number, PgType> = (() => {
  const types = new Map<number, PgType>();
  for (const [oid, name, arrayOid, arrayName] of BUILTIN_TYPES) {
    const element: PgType = { oid, name, kind: scalarKind(oid, false) };
    types.set(oid, element);
    types.set(arrayOid, { oid: arrayOid, name: arrayName, kind: { category: "array", element, delimiter: oid === BOX_OID ? ";" : "," } });
  }
  // int2vector and oidvector: arrays of int2 and oid to to_json, written with spaces (VECTOR_DELIMITER).
  types.set(22, { oid: 22, name: "int2vector", kind: { category: "array", element: types.get(21)!, delimiter: VECTOR_DELIMITER } });
  types.set(30, { oid: 30, name: "oidvector", kind: { category: "array", element: types.get(26)!, delimiter: VECTOR_DELIMITER } });
  return types;
})();

/** The built-in types {@link TypeCatalog} knows without a query. */
export function builtinTypes(): ReadonlyMap<number, PgType> {
  return BUILTINS;
}

/**
 * Every type the given ones need (domain bases, true arrays' elements, composite attributes, to
 * any depth), one row each, in one round trip. "True array" is get_element_type's test: typelem
 * set and typlen -1 (Postgres 13's test), and from 14 typsubscript = array_subscript_handler
 * (read through to_jsonb, as 13 has no such column).
 */
const CLOSURE_SQL = `
with recursive closure(oid) as (
  select pg_catalog.unnest($1::pg_catalog.oid[])
  union
  select ref.oid
    from closure c
    join pg_catalog.pg_type t on t.oid = c.oid
    cross join lateral (
      select t.typbasetype where t.typtype = 'd'
      union all
      select t.typelem where t.typelem <> 0 and t.typlen = -1
      union all
      select a.atttypid from pg_catalog.pg_attribute a
       where t.typtype = 'c' and a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped
    ) ref(oid)
)
select pg_catalog.json_build_object(
  'oid', t.oid::pg_catalog.int8,
  'name', case when n.nspname = 'pg_catalog' then t.typname::pg_catalog.text else n.nspname || '.' || t.typname end,
  'typtype', t.typtype,
  'base', case when t.typtype = 'd' then t.typbasetype::pg_catalog.int8 end,
  'element', case when t.typelem <> 0 and t.typlen = -1
                   and coalesce(pg_catalog.to_jsonb(t.*) ->> 'typsubscript' = 'array_subscript_handler', true)
                  then t.typelem::pg_catalog.int8 end,
  'delimiter', case when t.typoutput <> 'pg_catalog.array_out'::pg_catalog.regproc then '${VECTOR_DELIMITER}'
                   else (select e.typdelim from pg_catalog.pg_type e where e.oid = t.typelem)::pg_catalog.text end,
  'attributes', case when t.typtype = 'c' then
      (select coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(a.attname, a.atttypid::pg_catalog.int8) order by a.attnum), '[]')
         from pg_catalog.pg_attribute a
        where a.attrelid = t.typrelid and a.attnum > 0 and not a.attisdropped) end,
  'jsonCast', t.oid >= ${FIRST_NORMAL_OBJECT_ID} and exists (
      select from pg_catalog.pg_cast k
       where k.castsource = t.oid and k.casttarget = 'pg_catalog.json'::pg_catalog.regtype and k.castmethod = 'f')
)::pg_catalog.text as info
  from closure c
  join pg_catalog.pg_type t on t.oid = c.oid
  join pg_catalog.pg_namespace n on n.oid = t.typnamespace`;

/** One pg_type row as CLOSURE_SQL returns it. */
interface TypeRow {
  oid: number;
  name: string;
  typtype: string;
  base: number | null;
  element: number | null;
  delimiter: string | null;
  attributes: (readonly [string, number])[] | null;
  jsonCast: boolean;
}

function parseTypeRow(info: string): TypeRow {
  const value: unknown = JSON.parse(info);
  const bad = () => new PgJsonError(`unexpected type catalog row: ${info}`);
  if (typeof value !== "object" || value === null) throw bad();
  const row = value as Record<string, unknown>;
  const oid = row.oid;
  const name = row.name;
  const typtype = row.typtype;
  const base = row.base;
  const element = row.element;
  const delimiter = row.delimiter;
  const attributes = row.attributes;
  const jsonCast = row.jsonCast;
  if (typeof oid !== "number" || typeof name !== "string" || typeof typtype !== "string" || typeof jsonCast !== "boolean") throw bad();
  if ((base !== null && typeof base !== "number") || (element !== null && typeof element !== "number")) throw bad();
  if (delimiter !== null && typeof delimiter !== "string") throw bad();
  let attrs: (readonly [string, number])[] | null = null;
  if (attributes !== null) {
    if (!Array.isArray(attributes)) throw bad();
    attrs = attributes.map((a: unknown) => {
      if (!Array.isArray(a) || typeof a[0] !== "string" || typeof a[1] !== "number") throw bad();
      return [a[0], a[1]] as const;
    });
  }
  return { oid, name, typtype, base, element, delimiter, attributes: attrs, jsonCast };
}

/** Options of {@link TypeCatalog}. */
export interface TypeCatalogOptions {
  /** Start from the built-in types, which then cost no query. Default true. */
  builtins?: boolean;
}

/**
 * {@link PgType}s by oid, loaded from the catalog and kept. An unknown type costs one query,
 * which also brings every type it needs; concurrent requests for the same type share it.
 *
 * The cache is never stale by itself, but a type can change: ALTER TYPE adds, drops and renames
 * composite attributes, and pgoutput's texts follow the catalog as of each change (a historic
 * snapshot) while a query reads it as of now. Call {@link clear} when the relation's schema
 * changed (pgoutput sends a new Relation message) or when a text did not fit its type
 * (PgJsonError), then load again.
 */
export class TypeCatalog {
  private types: Map<number, PgType>;
  private pending = new Map<number, Promise<void>>();
  private queryCount = 0;

  constructor(
    private readonly db: Queryable,
    private readonly options: TypeCatalogOptions = {},
  ) {
    this.types = this.initial();
  }

  /** The type with this oid, loaded if need be. */
  async get(oid: number): Promise<PgType> {
    return (await this.getMany([oid]))[0]!;
  }

  /** The types with these oids, in order; the unknown ones are loaded together. */
  async getMany(oids: readonly number[]): Promise<PgType[]> {
    const types = this.types;
    const waits: Promise<void>[] = [];
    const missing: number[] = [];
    for (const oid of new Set(oids)) {
      if (types.has(oid)) continue;
      const pending = this.pending.get(oid);
      if (pending) waits.push(pending);
      else missing.push(oid);
    }
    if (missing.length > 0) {
      const load = this.load(missing, types);
      const pending = this.pending;
      for (const oid of missing) pending.set(oid, load);
      void load.then(
        () => {
          for (const oid of missing) pending.delete(oid);
        },
        () => {
          for (const oid of missing) pending.delete(oid);
        },
      );
      waits.push(load);
    }
    await Promise.all(waits);
    return oids.map((oid) => {
      const type = types.get(oid);
      if (!type) throw new PgJsonError(`type ${oid} is not in pg_type`);
      return type;
    });
  }

  /** Catalog queries run so far. */
  get queries(): number {
    return this.queryCount;
  }

  /** The type if it is already known. */
  peek(oid: number): PgType | undefined {
    return this.types.get(oid);
  }

  /** Forgets every loaded type (built-ins stay); loads under way finish into the old cache. */
  clear(): void {
    this.types = this.initial();
    this.pending = new Map();
  }

  private initial(): Map<number, PgType> {
    return this.options.builtins === false ? new Map() : new Map(BUILTINS);
  }

  private async load(oids: readonly number[], types: Map<number, PgType>): Promise<void> {
    this.queryCount++;
    const { rows } = await this.db.query<{ info: string }>(CLOSURE_SQL, [oids]);
    const found = new Map<number, TypeRow>();
    for (const { info } of rows) {
      const row = parseTypeRow(info);
      found.set(row.oid, row);
    }
    const visiting = new Set<number>();
    const build = (oid: number): PgType => {
      const known = types.get(oid);
      if (known) return known;
      const row = found.get(oid);
      if (!row) throw new PgJsonError(`type ${oid} is not in pg_type`);
      // Postgres refuses a composite that contains itself, so this only guards against a bug.
      if (visiting.has(oid)) throw new PgJsonError(`type ${row.name} contains itself`);
      visiting.add(oid);
      let kind: PgTypeKind;
      if (row.typtype === "d" && row.base !== null) {
        kind = build(row.base).kind; // getBaseType: a domain is written as its base type
      } else if (row.element !== null) {
        kind = { category: "array", element: build(row.element), delimiter: row.delimiter ?? "," };
      } else if (row.typtype === "c") {
        kind = { category: "composite", attributes: (row.attributes ?? []).map(([name, oid]) => ({ name, type: build(oid) })) };
      } else {
        kind = scalarKind(row.oid, row.jsonCast);
      }
      visiting.delete(oid);
      const type: PgType = { oid, name: row.name, kind };
      types.set(oid, type);
      return type;
    };
    for (const oid of oids) {
      if (found.has(oid)) build(oid);
    }
  }
}
