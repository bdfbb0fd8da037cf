/**
 * Exactly what Postgres wrote, through the whole stack: rows of the common Postgres types are
 * generated (fast-check), written through SQL with bound parameters (INSERT, UPDATE of some
 * columns, DELETE), captured by realtime.watch(..., retain => true), shipped by the real relay
 * (outbox and wal capture, each in its own database) to the real Worker, and every frame is read
 * AS TEXT and compared with Postgres's own JSON for the row version (`to_json(t.*)::text`, taken in
 * the writing statement itself with RETURNING) and its key (`json_build_object('id', id)::text`):
 * live frames, replay (since/epoch), snapshots of the retained rows, a sharded channel, and the
 * client library (numbers "exact" and "bigint").
 *
 * Extremes are always included: int2/int4/int8 bounds and integers around 2^53, 40-digit
 * numerics, NaN/±Infinity/-0 floats, text across Unicode planes with U+2028/U+2029, quotes,
 * backslashes and control characters, jsonb 10,000 levels deep and 10,000 keys wide, json text
 * kept verbatim by Postgres (whitespace, duplicate keys, 1e400) 20,000 levels deep, NULL in every
 * nullable column, 64-bit ids past 2^53 (also changed by an UPDATE: a delete and an insert), and
 * column names JSON must escape or JS could mistake (`__proto__`). json values only json accepts
 * (\u0000 and unpaired surrogate escapes) have a test of their own.
 *
 * Postgres's default max_stack_depth (2MB) accepts a json/jsonb value 10,000 levels deep but not
 * 20,000; the test databases get max_stack_depth = 7MB so the 20,000-level value (the one
 * test/worker/fidelity.test.ts carries inside workerd) can be written too.
 */
import { isDeepStrictEqual } from "node:util";
import fc from "fast-check";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ChannelEvent } from "../../protocol/index.ts";
import { compactJson, decodeString, jsonMembers, parseJson, scanValue } from "../../protocol/index.ts";
import type { Relay } from "../../relay/relay.ts";
import { recordingClient } from "../support/client.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { relayEvent, startRelay } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";

const stack = useStack({ worker: { SHARDS: "fidshard:*=4" } });

// ---------------------------------------------------------------------------------------------
// The table

/** Every column but the key, with its SQL type (also the cast of its bound parameter). */
const COLUMNS = {
  i2: "int2",
  i4: "int4",
  i8: "int8",
  n_fixed: "numeric(60,20)",
  n: "numeric",
  f8: "float8",
  f4: "real",
  t: "text",
  j: "jsonb",
  js: "json",
  ai: "int4[]",
  at: "text[]",
  b: "bytea",
  ts: "timestamptz",
  u: "uuid",
  e: "fid_mood",
  bo: "boolean",
  d: "date",
  iv: "interval",
  proto: "int4",
  weird: "text",
} as const;
type Column = keyof typeof COLUMNS;
const COLUMN_NAMES = Object.keys(COLUMNS) as Column[];
/** Columns whose SQL name is not their key here: names JSON must escape, and one JS must not treat as special. */
const SQL_NAME: Partial<Record<Column, string>> = { proto: "__proto__", weird: 'wéird "name" \\ 😀\u2028' };
const sqlName = (c: Column) => SQL_NAME[c] ?? c;
const ident = (c: Column) => `"${sqlName(c).replace(/"/g, '""')}"`;
/** Each column's SQL type, by its name in Postgres's JSON. */
const TYPE_OF: Record<string, string> = { id: "int8 (primary key)", ...Object.fromEntries(COLUMN_NAMES.map((c) => [sqlName(c), COLUMNS[c]])) };

/** Enum labels with quotes, backslashes, controls and characters outside the BMP. */
const MOODS = ["sad", "ok", 'quote"d', "back\\slash", "ünïcødé 😀", "tab\there", "line\nbreak", "\u2028sep\u2029"];

interface Values {
  i2: number | null;
  i4: number | null;
  i8: string | null;
  n_fixed: string | null;
  n: string | null;
  f8: string | null;
  f4: string | null;
  t: string | null;
  j: string | null;
  js: string | null;
  ai: (number | null)[] | null;
  at: (string | null)[] | null;
  b: Buffer | null;
  ts: string | null;
  u: string | null;
  e: string | null;
  bo: boolean | null;
  d: string | null;
  iv: string | null;
  proto: number | null;
  weird: string | null;
}

/**
 * One row's life: inserted with `values`, then `update` set (and its key changed to `newId`, which
 * arrives as a delete of the old key and an insert of the new one; no UPDATE when null), then deleted.
 */
interface Scenario {
  id: string;
  values: Values;
  update: Partial<Values> | null;
  newId?: string;
}

const NULLS: Values = {
  i2: null,
  i4: null,
  i8: null,
  n_fixed: null,
  n: null,
  f8: null,
  f4: null,
  t: null,
  j: null,
  js: null,
  ai: null,
  at: null,
  b: null,
  ts: null,
  u: null,
  e: null,
  bo: null,
  d: null,
  iv: null,
  proto: null,
  weird: null,
};

// ---------------------------------------------------------------------------------------------
// Generators

const nullable = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null, freq: 6 });
const TWO_53 = 2n ** 53n;
const INT8_MIN = -(2n ** 63n);
const INT8_MAX = 2n ** 63n - 1n;

/** 64-bit integers: the bounds, around ±2^53, anywhere, small. */
const int8 = fc
  .oneof(
    fc.constantFrom(INT8_MIN, INT8_MAX, TWO_53 + 1n, -(TWO_53 + 1n), TWO_53, TWO_53 - 1n, 0n),
    fc.bigInt({ min: TWO_53 - 3n, max: TWO_53 + 1000n }),
    fc.bigInt({ min: -TWO_53 - 1000n, max: -TWO_53 + 3n }),
    fc.bigInt({ min: INT8_MIN, max: INT8_MAX }),
    fc.bigInt({ min: -1000n, max: 1000n }),
  )
  .map(String);
const int2 = fc.oneof(fc.constantFrom(-32768, 32767, 0, -1), fc.integer({ min: -32768, max: 32767 }));
const int4 = fc.oneof(fc.constantFrom(-2147483648, 2147483647, 0), fc.integer());

/** A decimal with up to `intDigits` integer digits and `fracDigits` fraction digits. */
const decimal = (intDigits: number, fracDigits: number) =>
  fc
    .tuple(
      fc.boolean(),
      fc.oneof(fc.bigInt({ min: 0n, max: 10n ** BigInt(intDigits) - 1n }), fc.bigInt({ min: 0n, max: 10n ** 6n })),
      fc.oneof(
        fc.constant(""),
        fc.stringMatching(new RegExp(`^[0-9]{1,${fracDigits}}$`)),
        fc.bigInt({ min: 0n, max: 10n ** BigInt(fracDigits) - 1n }).map((f) => String(f).padStart(fracDigits, "0")),
      ),
    )
    .map(([neg, i, f]) => `${neg ? "-" : ""}${i}${f ? `.${f}` : ""}`);
const FORTY_DIGITS = "12345678901234567890.12345678901234567890";
const numericFixed = fc.oneof(
  decimal(40, 20),
  fc.constantFrom(FORTY_DIGITS, `-${"9".repeat(40)}.${"9".repeat(20)}`, "0.00000000000000000001", "9007199254740993"),
);
const numeric = fc.oneof(
  decimal(60, 60),
  fc.constantFrom(
    FORTY_DIGITS,
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e-400",
    "0.000",
    "-0",
    "1.50",
    "9007199254740993",
    "123456789012345678901234567890123456789012345678901234567890",
  ),
);
/** A float's text as Postgres reads it (String(-0) would be "0"). */
const floatText = (d: number) => (Number.isNaN(d) ? "NaN" : d === Infinity ? "Infinity" : d === -Infinity ? "-Infinity" : Object.is(d, -0) ? "-0" : String(d));
// 2^53 + 1 is not a double: the literal is the double Postgres's float8 would hold for it.
// biome-ignore lint/correctness/noPrecisionLoss: on purpose, as above
const float8 = fc.oneof(fc.constantFrom(NaN, Infinity, -Infinity, -0, 5e-324, Number.MAX_VALUE, 0.1 + 0.2, 9007199254740993), fc.double()).map(floatText);
const float4 = fc.oneof(fc.constantFrom(NaN, Infinity, -Infinity, -0), fc.float()).map(floatText);

const CONTROLS = `${Array.from({ length: 31 }, (_, i) => String.fromCharCode(i + 1)).join("")}\u007f\u0080\u009f`;
/** Text across Unicode planes; Postgres text cannot hold NUL, so none is generated. */
const text = fc
  .oneof(
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.string({ unit: "grapheme", maxLength: 20 }),
    fc.constantFrom(
      "\u2028\u2029",
      'say "hi" \\ back\\slash \\u0041 \\n \\\\"',
      CONTROLS,
      "😀 𝄞 漢字 é \u{10FFFF} \u{E0001} \u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
      "\ufeffBOM \ufffd \uffff",
      // biome-ignore lint/suspicious/noTemplateCurlyInString: text that looks like a template, on purpose
      "</script><!-- ${x} `y`",
      "",
    ),
  )
  // biome-ignore lint/suspicious/noControlCharactersInRegex: Postgres text cannot hold NUL
  .map((s) => s.replace(/\u0000/g, ""));

/** A JSON number as text: integers past 2^53, long decimals, exponents, -0. */
const jsonNumber = fc.oneof(
  fc.bigInt({ min: INT8_MIN * 1000n, max: INT8_MAX * 1000n }).map(String),
  decimal(25, 25),
  fc.constantFrom("1e400", "-1e-400", "-0", "0.0", "1.50", "1E+2", FORTY_DIGITS, "9007199254740993", "-9223372036854775808"),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
);
/**
 * JSON string tokens. json (not jsonb) also accepts \u0000 and unpaired surrogate escapes; those
 * are left to their own test ("json that only json accepts"), since an UPDATE of such a row fails.
 */
const jsonString = fc.oneof(
  text.map((s) => JSON.stringify(s)),
  fc.constantFrom('"\u2028\u2029"', '"\\" \\\\ \\/ \\b\\f\\n\\r\\t"', '"\\ud83d\\ude00 \\u00e9"', '"😀 𝄞 漢字"', '"\\u0041\\u00E9\\uFFFF"'),
);
/** Whitespace JSON allows between tokens (json keeps it; jsonb drops it). */
const ws = fc.constantFrom("", "", " ", "\n", "\t ", "\r\n  ");
/** JSON text; `raw` (for json columns, which Postgres keeps verbatim) with arbitrary whitespace and duplicate keys. */
const jsonText = (raw: boolean): fc.Arbitrary<string> =>
  fc.letrec<{ value: string }>((tie) => ({
    value: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      jsonNumber,
      jsonString,
      fc.constantFrom("true", "false", "null"),
      fc.array(fc.tuple(ws, tie("value"), ws), { maxLength: 4 }).map((xs) => `[${xs.map(([a, v, b]) => a + v + b).join(",")}]`),
      fc
        .array(fc.tuple(raw ? fc.constantFrom("a", "a", "b", "k_1", "é", "") : fc.stringMatching(/^[a-z_]{0,8}$/), ws, tie("value")), { maxLength: 4 })
        .map((kvs) => `{${kvs.map(([k, w, v]) => `${w}"${k}"${w}:${w}${v}${w}`).join(",")}}`),
    ),
  })).value;
const jsonb = jsonText(false);
const json = fc.tuple(ws, jsonText(true), ws).map(([a, v, b]) => a + v + b);

const timestamptz = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59.999999+00", "2000-01-01 00:00:00+14:59", "1900-01-01 00:00:00Z"),
  fc
    .tuple(fc.date({ min: new Date(Date.UTC(1, 0, 1)), max: new Date(Date.UTC(9999, 11, 31)), noInvalidDate: true }), fc.integer({ min: 0, max: 999 }))
    .map(([d, us]) => `${d.toISOString().slice(0, 23)}${String(us).padStart(3, "0")}Z`),
);

const date = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "4713-01-01 BC", "5874897-12-31", "2000-02-29"),
  fc.date({ min: new Date(Date.UTC(1, 0, 1)), max: new Date(Date.UTC(9999, 11, 31)), noInvalidDate: true }).map((d) => d.toISOString().slice(0, 10)),
);
const interval = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "0", "-178000000 years", "1 mon -1 day 00:00:00.000001"),
  fc
    .tuple(
      fc.integer({ min: -10_000, max: 10_000 }),
      fc.integer({ min: -100, max: 100 }),
      fc.integer({ min: -1000, max: 1000 }),
      fc.integer({ min: -(10 ** 9), max: 10 ** 9 }),
    )
    .map(([y, m, d, us]) => `${y} years ${m} mons ${d} days ${us} microseconds`),
);

const values: fc.Arbitrary<Values> = fc.record({
  i2: nullable(int2),
  i4: nullable(int4),
  i8: nullable(int8),
  n_fixed: nullable(numericFixed),
  n: nullable(numeric),
  f8: nullable(float8),
  f4: nullable(float4),
  t: nullable(text),
  j: nullable(jsonb),
  js: nullable(json),
  ai: nullable(fc.array(fc.option(int4, { nil: null, freq: 3 }), { maxLength: 5 })),
  at: nullable(fc.array(fc.option(text, { nil: null, freq: 3 }), { maxLength: 4 })),
  b: nullable(fc.uint8Array({ maxLength: 32 }).map((a) => Buffer.from(a))),
  ts: nullable(timestamptz),
  u: nullable(fc.uuid()),
  e: nullable(fc.constantFrom(...MOODS)),
  bo: nullable(fc.boolean()),
  d: nullable(date),
  iv: nullable(interval),
  proto: nullable(int4),
  weird: nullable(text),
});

const scenario: fc.Arbitrary<Scenario> = fc
  .record({ id: int8, values, next: values, changed: fc.subarray(COLUMN_NAMES, { minLength: 1 }), newId: fc.option(int8, { nil: undefined, freq: 4 }) })
  .map(({ id, values, next, changed, newId }) => ({
    id,
    values,
    update: Object.fromEntries(changed.map((c) => [c, next[c]])) as Partial<Values>,
    newId: newId === id ? undefined : newId,
  }));
/** Several rows per run, every key (before and after an update) distinct. */
const scenarios = fc.array(scenario, { minLength: 1, maxLength: 4 }).filter((scs) => {
  const ids = scs.flatMap((sc) => [sc.id, ...(sc.newId === undefined ? [] : [sc.newId])]);
  return new Set(ids).size === ids.length;
});

// ---------------------------------------------------------------------------------------------
// Fixed extremes, in every run of both modes

const DEEP_ARRAYS = `${"[".repeat(10_000)}9007199254740993${"]".repeat(10_000)}`; // 10,000 levels
const DEEP_OBJECTS = `${'{"a":'.repeat(10_000)}"bottom \u2028"${"}".repeat(10_000)}`; // 10,000 levels
const DEEPER = `${'{"a" : ['.repeat(10_000)}1e400${"]}".repeat(10_000)}`; // 20,000 levels (needs max_stack_depth > 2MB)
const WIDE = `{${Array.from({ length: 10_000 }, (_, i) => `"k${i}": ${i % 3 === 0 ? "9007199254740993" : i % 3 === 1 ? `"v${i}\u2029"` : FORTY_DIGITS}`).join(", ")}}`;
const WIDE_RAW = ` {${Array.from({ length: 10_000 }, (_, i) => `\n\t"k${i % 5000}" :${i % 2 ? "-0" : "1.50"}`).join(" ,")}\n} `; // json: duplicate keys, whitespace kept

const FIXED: Scenario[] = [
  // NULL in every nullable column, at the largest key.
  { id: String(INT8_MAX), values: NULLS, update: { t: "no longer null", i8: String(TWO_53 + 1n) } },
  {
    id: String(INT8_MIN),
    values: {
      i2: -32768,
      i4: -2147483648,
      i8: String(INT8_MIN),
      n_fixed: `-${"9".repeat(40)}.${"9".repeat(20)}`,
      n: "-1e-400",
      f8: "-Infinity",
      f4: "-Infinity",
      t: `${CONTROLS} "quotes" \\backslash\\ \u2028\u2029`,
      j: DEEP_ARRAYS,
      js: ' "\\u2028 \\ud83d\\ude00 \\\\ \\" \\/" ',
      ai: [-2147483648, null, 2147483647],
      at: [null, "", "NULL", '"', "\\", "a,b", "{x}", "\u2028"],
      b: Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
      ts: "-infinity",
      u: "00000000-0000-0000-0000-000000000000",
      e: MOODS[2]!,
      bo: false,
      d: "4713-01-01 BC",
      iv: "-178000000 years",
      proto: -2147483648,
      weird: CONTROLS,
    },
    update: { j: DEEP_OBJECTS, f8: "-0", ai: [] },
  },
  {
    id: String(TWO_53 + 1n),
    values: {
      i2: 32767,
      i4: 2147483647,
      i8: String(INT8_MAX),
      n_fixed: `${"9".repeat(40)}.${"9".repeat(20)}`,
      n: "1e400",
      f8: "NaN",
      f4: "NaN",
      t: "😀 𝄞 漢字 é \u{10FFFF} \u{E0001}",
      j: WIDE,
      js: WIDE_RAW,
      ai: null,
      at: [null],
      b: Buffer.alloc(0),
      ts: "infinity",
      u: "ffffffff-ffff-ffff-ffff-ffffffffffff",
      e: MOODS[4]!,
      bo: true,
      d: "5874897-12-31",
      iv: "infinity",
      proto: 2147483647,
      weird: "\u2028\u2029 😀",
    },
    update: { i8: String(-(TWO_53 + 1n)), n: FORTY_DIGITS, e: MOODS[7]! },
  },
  {
    // One apart from the row above: retained keys must tell them apart.
    id: String(TWO_53),
    values: {
      ...NULLS,
      i8: String(TWO_53 + 1n),
      n_fixed: FORTY_DIGITS,
      n: FORTY_DIGITS,
      f8: "-0",
      f4: "-0",
      j: `{"n": 1e400, "m": -0, "s": "\\u2028", "big": 9007199254740993, "dec": ${FORTY_DIGITS}}`,
      js: DEEPER,
      ts: "2024-02-29 23:59:59.999999+05:45",
    },
    update: { f8: "5e-324", f4: "1e-45", js: ' { "a" :1.50 , "a":1e400 ,"z": -0 , "big": 9007199254740993 } ', t: 'say "hi" \\ \\u0041' },
  },
  {
    id: String(-(TWO_53 + 1n)),
    values: { ...NULLS, f8: "Infinity", f4: "Infinity", i8: String(-(TWO_53 + 1n)), n: "NaN" },
    update: { n: "-Infinity", f8: "1.7976931348623157e308" },
    newId: String(-TWO_53), // one apart, past 2^53: a delete of the old key, an insert of the new
  },
];

/**
 * Values Postgres's json type accepts and keeps verbatim, but jsonb (and json's `->`) refuse:
 * \u0000 and unpaired surrogate escapes. Each row on its own, so every failure is reported.
 */
const JSON_ONLY: Scenario[] = [
  // Inserted and deleted only: these must arrive exactly (an UPDATE of such a row is refused, below).
  { id: String(-(TWO_53 + 1n)), values: { ...NULLS, js: ' ["\\u0000", "\\ud83d", "\\ude00", {"\\u0000": "\\udbff\\u0000"}] ' }, update: null },
  { id: "1", values: { ...NULLS, js: '"\\u0000"' }, update: { t: "updated" } },
  { id: String(TWO_53 + 1n), values: { ...NULLS, js: '{"hi": "\\ud83d", "lo": "\\ude00 x"}' }, update: { i4: 1 } },
  { id: "3", values: { ...NULLS, t: "plain" }, update: { js: '["\\u0000", "\\udbff"]' } },
];

// ---------------------------------------------------------------------------------------------
// Reading frames as text

/** The elements of a JSON array's text, as texts. */
function elements(array: string): string[] {
  const out: string[] = [];
  let pos = array.indexOf("[") + 1;
  for (;;) {
    while (" \n\r\t,".includes(array[pos]!)) pos++;
    if (array[pos] === "]") return out;
    const end = scanValue(array, pos);
    if (end < 0) throw new Error(`not a JSON array: ${array.slice(0, 200)}`);
    out.push(array.slice(pos, end));
    pos = end;
  }
}

/** An event of an `events` frame: its seq and name, and its data's text exactly as it arrived. */
interface RawEvent {
  seq: number;
  event: string;
  data: string;
}

const parsedRaw = new WeakMap<TestSubscriber, { frames: number; events: RawEvent[] }>();
/** Every event a socket received, read from the frames' text (incrementally). */
function rawEvents(sub: TestSubscriber): RawEvent[] {
  let state = parsedRaw.get(sub);
  if (!state) parsedRaw.set(sub, (state = { frames: 0, events: [] }));
  for (; state.frames < sub.raw.length; state.frames++) {
    const frame = jsonMembers(sub.raw[state.frames]!);
    if (frame?.get("type") !== '"events"') continue;
    for (const e of elements(frame.get("events")!)) {
      const m = jsonMembers(e)!;
      state.events.push({ seq: Number(m.get("seq")), event: decodeString(m.get("event")!), data: m.get("data")! });
    }
  }
  return state.events;
}

/** The last snapshot frame a socket received, from its text. */
function rawSnapshot(sub: TestSubscriber): { seq: number; rows: { schema: string; table: string; key: string; row: string; seq: number }[] } {
  const frame = jsonMembers(sub.raw.filter((t) => t.startsWith('{"type":"snapshot"')).at(-1)!)!;
  return {
    seq: Number(frame.get("seq")),
    rows: elements(frame.get("rows")!).map((r) => {
      const m = jsonMembers(r)!;
      return { schema: m.get("schema")!, table: m.get("table")!, key: m.get("key")!, row: m.get("row")!, seq: Number(m.get("seq")) };
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Comparing texts, and saying what differs

/** A value for a message: short ones whole, long ones by length and ends. */
function show(text: string | undefined | null): string {
  if (text === undefined) return "(missing)";
  if (text === null) return "(null)";
  return text.length <= 160 ? JSON.stringify(text) : `${JSON.stringify(text.slice(0, 70))}...${JSON.stringify(text.slice(-70))} (${text.length} chars)`;
}

/** Where two long texts first differ, with some context. */
function firstDifference(a: string, b: string): string {
  let i = 0;
  while (i < a.length && i < b.length && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return `first difference at char ${i}: Postgres ${show(b.slice(Math.max(0, i - 30), i + 40))}, arrived ${show(a.slice(Math.max(0, i - 30), i + 40))}`;
}

/**
 * The mismatches between `arrived` (a JSON text read from a frame) and `wrote` (Postgres's text):
 * none when equal; else, for two objects, one per differing member naming its column and type,
 * with what Postgres wrote and what arrived.
 */
function diffText(what: string, arrived: string | undefined, wrote: string): string[] {
  if (arrived === wrote) return [];
  if (arrived !== undefined) {
    const a = jsonMembers(arrived);
    const w = jsonMembers(wrote);
    if (a && w) {
      const out: string[] = [];
      for (const name of new Set([...w.keys(), ...a.keys()])) {
        const [x, y] = [a.get(name), w.get(name)];
        if (x === y) continue;
        const detail = x !== undefined && y !== undefined && Math.max(x.length, y.length) > 160 ? `; ${firstDifference(x, y)}` : "";
        out.push(`${what}.${name} (${TYPE_OF[name] ?? "?"}): Postgres wrote ${show(y)}, arrived ${show(x)}${detail}`);
      }
      if (out.length > 0) return out;
    }
  }
  return [`${what}: Postgres wrote ${show(wrote)}, arrived ${show(arrived)}${arrived !== undefined ? `; ${firstDifference(arrived, wrote)}` : ""}`];
}

/** What Postgres wrote for one change event of one table. */
interface Expected {
  event: "insert" | "update" | "delete";
  table: string;
  id: string;
  /** json_build_object('id', id)::text */
  key: string;
  /** to_json(t.*)::text of the row version after the statement, or null. */
  new: string | null;
  /** ... before the statement, or null. */
  old: string | null;
}

const OPS = { insert: '"INSERT"', update: '"UPDATE"', delete: '"DELETE"' } as const;
const DATA_MEMBERS = ["op", "schema", "table", "key", "new", "old"];

/** The mismatches between the events that arrived (as text) and what Postgres wrote. */
function eventMismatches(where: string, arrived: RawEvent[], expected: Expected[]): string[] {
  const out: string[] = [];
  if (arrived.length !== expected.length) out.push(`${where}: ${expected.length} events written, ${arrived.length} arrived`);
  expected.forEach((x, i) => {
    const e = arrived[i];
    const label = `${where} ${x.table} ${x.event} id=${x.id}`;
    if (!e) return;
    if (e.event !== x.event) out.push(`${label}: event name ${JSON.stringify(e.event)}`);
    const m = jsonMembers(e.data);
    if (!m) {
      out.push(`${label}: data is not an object: ${show(e.data)}`);
      return;
    }
    if ([...m.keys()].join() !== DATA_MEMBERS.join()) out.push(`${label}: data members ${[...m.keys()].join()}`);
    out.push(...diffText(`${label} op`, m.get("op"), OPS[x.event]));
    out.push(...diffText(`${label} schema`, m.get("schema"), '"public"'));
    out.push(...diffText(`${label} table`, m.get("table"), JSON.stringify(x.table)));
    out.push(...diffText(`${label} key`, m.get("key"), x.key));
    out.push(...diffText(`${label} new`, m.get("new"), x.new ?? "null"));
    out.push(...diffText(`${label} old`, m.get("old"), x.old ?? "null"));
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// What the client library must hand the app

const NUMBER_COLUMNS = new Set(["id", "i2", "i4", "i8", "n_fixed", "n", "__proto__"]);

/** A decimal number text as one canonical text of its value: `-1.50e1` and `-15` both give `-0.15e2`. */
function decimalValue(text: string): string {
  const m = /^(-?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?$/.exec(text);
  if (!m) throw new Error(`not a JSON number: ${text}`);
  const whole = m[2] ?? "";
  let digits = whole + (m[3] ?? "");
  let exponent = Number(m[4] ?? 0) + whole.length;
  const leading = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(leading).replace(/0+$/, "");
  exponent -= leading;
  return digits === "" ? `${m[1]}0` : `${m[1]}0.${digits}e${exponent}`;
}

/**
 * The value the client must hand the app for a JSON number token Postgres wrote (client/index.ts
 * `Numbers`): integers past ±2^53 as the digits ("exact") or a bigint ("bigint"); any other number
 * a double cannot hold as the same decimal (a 40-digit numeric, 1e400) as the digits; every number
 * that fits (a double holding the same decimal value, trailing zeros aside) as a number.
 */
function appNumber(token: string, mode: "exact" | "bigint"): unknown {
  if (token === "null") return null;
  if (token.startsWith('"')) return JSON.parse(token) as string; // "NaN", "Infinity"
  const n = Number(token);
  if (/^-?[0-9]+$/.test(token)) return Number.isSafeInteger(n) ? n : mode === "bigint" ? BigInt(token) : token;
  return Number.isFinite(n) && decimalValue(token) === decimalValue(Object.is(n, -0) ? "-0" : String(n)) ? n : token;
}

/** The mismatches between a row the client handed over and the row text Postgres wrote. */
function appRowMismatches(what: string, value: unknown, wrote: string | null, mode: "exact" | "bigint"): string[] {
  if (wrote === null || wrote === "null") return value === null ? [] : [`${what}: Postgres wrote null, the app got ${typeof value}`];
  if (typeof value !== "object" || value === null) return [`${what}: the app got ${String(value)}`];
  const row = value as Record<string, unknown>;
  const out: string[] = [];
  const members = jsonMembers(wrote)!;
  if (Object.keys(row).length !== members.size) out.push(`${what}: ${members.size} columns written, the app got ${Object.keys(row).length}`);
  for (const [name, token] of members) {
    const got = Object.getOwnPropertyDescriptor(row, name)?.value; // own members only: "__proto__" is a column here
    let want: unknown;
    if (NUMBER_COLUMNS.has(name)) want = appNumber(token, mode);
    else if (token.length <= 4000) want = parseJson(token, mode === "exact" ? "string" : "bigint");
    else continue; // the 10,000-deep and -wide values: their text was compared frame by frame
    const same = typeof want === "number" ? Object.is(got, want) : isDeepStrictEqual(got, want);
    if (!same)
      out.push(
        `${what}.${name} (${TYPE_OF[name] ?? "?"}, numbers "${mode}"): Postgres wrote ${show(token)}, the app got ${typeof got} ${show(typeof got === "bigint" ? `${got}n` : JSON.stringify(got))}`,
      );
  }
  return out;
}

function clientMismatches(where: string, events: ChannelEvent[], expected: Expected[], mode: "exact" | "bigint"): string[] {
  const out: string[] = [];
  if (events.length !== expected.length) out.push(`${where}: ${expected.length} events written, the app got ${events.length}`);
  expected.forEach((x, i) => {
    const e = events[i];
    if (!e) return;
    const label = `${where} ${x.event} id=${x.id}`;
    const data = e.data as { op?: unknown; key?: unknown; new?: unknown; old?: unknown };
    if (e.event !== x.event || data.op !== JSON.parse(OPS[x.event])) out.push(`${label}: got event ${e.event} op ${String(data.op)}`);
    out.push(...appRowMismatches(`${label} key`, data.key, x.key, mode));
    out.push(...appRowMismatches(`${label} new`, data.new, x.new, mode));
    out.push(...appRowMismatches(`${label} old`, data.old, x.old, mode));
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// One capture mode's stack

const TABLE = "vals";
const SHARDED_TABLE = "vals_s";

interface Stack {
  mode: "outbox" | "wal" | "publication";
  /** The Worker's host:port, for the client library. */
  host: string;
  db: TestDatabase;
  relay: Relay;
  writer: pg.Client;
  channels: Record<string, string>;
  /** Live sockets, connected before any write: one per table's channel. */
  live: Record<string, TestSubscriber>;
  epochs: Record<string, string>;
  /** Errors and closes of the live sockets before the stack stops (none is expected). */
  trouble: string[];
  /** The client library on the plain channel, connected before any write. */
  exact: ReturnType<typeof recordingClient>;
  bigint: ReturnType<typeof recordingClient>;
}

async function startStack(mode: "outbox" | "wal" | "publication"): Promise<Stack> {
  const db = await testDatabase(`fidelity_${mode}`);
  const admin = await db.client();
  await admin.query(`alter database ${admin.escapeIdentifier(new URL(db.url).pathname.slice(1))} set max_stack_depth = '7MB'`);
  const channels = { [TABLE]: `fid-${mode}`, [SHARDED_TABLE]: `fidshard:${mode}` };
  await admin.query(`create type fid_mood as enum (${MOODS.map((m) => admin.escapeLiteral(m)).join(", ")})`);
  await admin.query(`create table ${TABLE} (id int8 primary key, ${COLUMN_NAMES.map((c) => `${ident(c)} ${COLUMNS[c]}`).join(", ")})`);
  await admin.query(`create table ${SHARDED_TABLE} (like ${TABLE} including all)`);
  for (const [table, channel] of Object.entries(channels)) {
    // Decoded from a publication, an update's and a delete's old row is whole only under REPLICA
    // IDENTITY FULL (by default the WAL holds the key's columns): with it, events equal the triggers'.
    if (mode === "publication") await admin.query(`alter table ${table} replica identity full`);
    await admin.query("select realtime.watch($1, $2, retain => true)", [table, channel]);
  }

  const live: Record<string, TestSubscriber> = {};
  const trouble: string[] = [];
  for (const [table, channel] of Object.entries(channels)) {
    const sub = (live[table] = await TestSubscriber.connect(stack.worker.url, channel));
    // A live socket must stay connected for the whole file: say why if it does not.
    sub.ws.on("error", (err) => trouble.push(`live socket on ${channel}: ${err.message}`));
    sub.ws.on("close", (code, reason) =>
      trouble.push(`live socket on ${channel} closed ${code} ${reason.toString()} after ${sub.raw.length} frames (last: ${show(sub.raw.at(-1))})`),
    );
  }
  expect(live[SHARDED_TABLE]!.welcome).toHaveProperty("shard");
  expect(live[TABLE]!.welcome).not.toHaveProperty("shard");
  const epochs = Object.fromEntries(Object.entries(live).map(([t, s]) => [t, s.welcome.epoch]));
  const host = new URL(stack.worker.url).host;
  const exact = recordingClient({ host, channel: channels[TABLE]! });
  const bigint = recordingClient({ host, channel: channels[TABLE]!, numbers: "bigint" });
  await Promise.all([exact, bigint].map((c) => c.until(() => c.seen.statuses.includes("open"), "the client's welcome")));

  const relay = startRelay({ databaseUrl: db.url, workerUrl: stack.worker.url, source: mode });
  await relayEvent(relay, mode === "outbox" ? "idle" : "streaming", undefined, 60_000);
  expect((await db.sql<{ capture: string }>("select capture from realtime.installation"))[0]!.capture).toBe(mode);
  if (mode === "publication") {
    // No trigger at all: the tables' own changes are decoded.
    expect(await db.sql("select tgname from pg_trigger where tgrelid in ($1::regclass, $2::regclass)", [TABLE, SHARDED_TABLE])).toEqual([]);
  }

  // The writer's session: a zone with a 45-minute offset, so timestamptz text is not UTC's. Decoded
  // from a publication, a timestamptz is written at UTC's offset whatever the writer's zone (the
  // same instant; the README says so), so that mode's writer is compared in UTC.
  const writer = await db.client();
  await writer.query(mode === "publication" ? "set timezone = 'UTC'" : "set timezone = 'Asia/Kathmandu'");
  expect((await writer.query<{ max_stack_depth: string }>("show max_stack_depth")).rows[0]!.max_stack_depth).toBe("7MB");
  return { mode, host, db, relay, writer, channels, live, epochs, trouble, exact, bigint };
}

async function stopStack(s: Stack | undefined): Promise<void> {
  if (!s) return;
  for (const sub of Object.values(s.live)) sub.close();
  s.exact.sub.close();
  s.bigint.sub.close();
  await s.relay.stop();
  await s.db.drop();
}

async function transaction(c: pg.Client, body: () => Promise<void>): Promise<void> {
  await c.query("begin");
  try {
    await body();
    await c.query("commit");
  } catch (err) {
    await c.query("rollback");
    throw err;
  }
}

const params = (v: Partial<Values>, columns: Column[]) => columns.map((c) => v[c]);

async function insert(c: pg.Client, table: string, s: Scenario): Promise<Expected> {
  const sql = `insert into ${table} (id, ${COLUMN_NAMES.map(ident).join(", ")}) values ($1::int8, ${COLUMN_NAMES.map((col, i) => `$${i + 2}::${COLUMNS[col]}`).join(", ")})
               returning json_build_object('id', id)::text as key, to_json(${table}.*)::text as row`;
  const { rows } = await c.query<{ key: string; row: string }>(sql, [s.id, ...params(s.values, COLUMN_NAMES)]);
  return { event: "insert", table, id: s.id, key: rows[0]!.key, new: rows[0]!.row, old: null };
}

/** The UPDATE: one update event, or a delete of the old key and an insert of the new one when the key changes. */
async function update(c: pg.Client, table: string, s: Scenario): Promise<Expected[]> {
  if (!s.update) return [];
  const columns = Object.keys(s.update) as Column[];
  const sql = `update ${table} t set id = $2::int8, ${columns.map((col, i) => `${ident(col)} = $${i + 3}::${COLUMNS[col]}`).join(", ")}
               from (select to_json(o.*)::text as old, json_build_object('id', o.id)::text as old_key from ${table} o where o.id = $1::int8) before
               where t.id = $1::int8
               returning json_build_object('id', t.id)::text as key, before.old_key, before.old, to_json(t.*)::text as row`;
  const newId = s.newId ?? s.id;
  const { rows } = await c
    .query<{ key: string; old_key: string; old: string; row: string }>(sql, [s.id, newId, ...params(s.update, columns)])
    .catch((err: Error & { detail?: string }) => {
      const nonNull = (v: Partial<Values>) => show(JSON.stringify(Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null))));
      throw new Error(
        `Postgres refused UPDATE ${table} SET ${columns.join(", ")} WHERE id = ${s.id} (row ${nonNull(s.values)}, set ${nonNull(s.update!)}): ${err.message}${err.detail ? ` (${err.detail})` : ""}`,
        { cause: err },
      );
    });
  const r = rows[0]!;
  if (newId === s.id) return [{ event: "update", table, id: s.id, key: r.key, new: r.row, old: r.old }];
  return [
    { event: "delete", table, id: s.id, key: r.old_key, new: null, old: r.old },
    { event: "insert", table, id: newId, key: r.key, new: r.row, old: null },
  ];
}

async function remove(c: pg.Client, table: string, s: Scenario): Promise<Expected> {
  const id = s.newId ?? s.id;
  const { rows } = await c.query<{ key: string; row: string }>(
    `delete from ${table} t where t.id = $1::int8 returning json_build_object('id', t.id)::text as key, to_json(t.*)::text as row`,
    [id],
  );
  return { event: "delete", table, id, key: rows[0]!.key, new: null, old: rows[0]!.row };
}

let barriers = 0;

/**
 * Publishes a barrier event on both channels (after any leftover rows are deleted) and waits for
 * every socket and client to receive it: what arrives after it is this run's.
 */
async function barrier(s: Stack): Promise<{ live: Record<string, number>; seq: Record<string, number>; exact: number; bigint: number }> {
  for (const table of [TABLE, SHARDED_TABLE]) await s.writer.query(`delete from ${table}`);
  const n = ++barriers;
  await s.writer.query(
    "select realtime.publish($1, 'barrier', jsonb_build_object('n', $3::int)), realtime.publish($2, 'barrier', jsonb_build_object('n', $3::int))",
    [s.channels[TABLE], s.channels[SHARDED_TABLE], n],
  );
  const isBarrier = (e: ChannelEvent) => e.event === "barrier" && (e.data as { n?: unknown }).n === n;
  const after = (events: ChannelEvent[]) => {
    const i = events.findIndex(isBarrier);
    return i < 0 ? undefined : i + 1;
  };
  const live: Record<string, number> = {};
  const seq: Record<string, number> = {};
  for (const [table, sub] of Object.entries(s.live)) {
    live[table] = await sub.until(() => after(sub.events), `barrier ${n}`);
    seq[table] = sub.events[live[table]! - 1]!.seq;
  }
  const exact = await s.exact.until(() => after(s.exact.seen.events), `barrier ${n} (client, exact)`);
  const bigint = await s.bigint.until(() => after(s.bigint.seen.events), `barrier ${n} (client, bigint)`);
  return { live, seq, exact, bigint };
}

/** Waits until `sub` has `n` events after index `from`; returns them, read from the frames' text. */
async function eventsAfter(sub: TestSubscriber, from: number, n: number, what: string): Promise<RawEvent[]> {
  await sub.until(() => sub.events.length >= from + n || undefined, what, 30_000);
  const raw = rawEvents(sub);
  expect(raw.map((e) => e.seq)).toEqual(sub.events.map((e) => e.seq)); // the text reading saw every event
  return raw.slice(from);
}

/** A fresh socket's snapshot, compared with the rows Postgres holds now (and the seqs of their last events). */
async function snapshotMismatches(s: Stack, table: string, lastSeq: number, rowSeqs: Map<string, number>): Promise<string[]> {
  const out: string[] = [];
  const where = `snapshot of ${s.channels[table]}`;
  const sub = await TestSubscriber.connect(stack.worker.url, s.channels[table]!, { snapshot: "1" });
  try {
    await sub.until(() => sub.frames.some((f) => f.type === "snapshot") || undefined, "snapshot");
    if (table === SHARDED_TABLE && !("shard" in sub.welcome)) out.push(`${where}: the socket is not on a shard`);
    const snapshot = rawSnapshot(sub);
    const { rows } = await s.writer.query<{ id: string; key: string; row: string }>(
      `select id::text as id, json_build_object('id', id)::text as key, to_json(t.*)::text as row from ${table} t`,
    );
    if (snapshot.seq !== lastSeq) out.push(`${where}: seq ${snapshot.seq}, the channel's last event is ${lastSeq}`);
    if (snapshot.rows.length !== rows.length)
      out.push(`${where}: ${rows.length} rows in Postgres, ${snapshot.rows.length} in the snapshot (keys ${snapshot.rows.map((r) => r.key).join(" ")})`);
    for (const r of rows) {
      // Snapshot keys are the key's compact text (protocol/change.ts): {"id" : 5} is {"id":5}, digits kept.
      const found = snapshot.rows.filter((x) => x.key === compactJson(r.key));
      if (found.length !== 1) {
        out.push(
          `${where}: ${found.length} rows with key ${compactJson(r.key)} (Postgres: ${r.key}); snapshot keys: ${snapshot.rows.map((x) => x.key).join(" ")}`,
        );
        continue;
      }
      const x = found[0]!;
      out.push(...diffText(`${where} id=${r.id} row`, x.row, r.row));
      if (x.schema !== '"public"' || x.table !== JSON.stringify(table)) out.push(`${where} id=${r.id}: schema ${x.schema}, table ${x.table}`);
      if (x.seq !== rowSeqs.get(compactJson(r.key))) out.push(`${where} id=${r.id}: seq ${x.seq}, the row's last event was ${rowSeqs.get(compactJson(r.key))}`);
    }
  } finally {
    sub.close();
  }
  return out;
}

/** The client library joining now: its snapshot's rows, as handed to the app (numbers "exact"), against Postgres's rows. */
async function clientSnapshotMismatches(s: Stack): Promise<string[]> {
  const where = `client snapshot of ${s.channels[TABLE]}`;
  const joining = recordingClient({ host: s.host, channel: s.channels[TABLE]! });
  try {
    const snapshot = await joining.until(() => joining.seen.snapshots[0], "the client's snapshot");
    const { rows } = await s.writer.query<{ id: string; key: string; row: string }>(
      `select id::text as id, json_build_object('id', id)::text as key, to_json(t.*)::text as row from ${TABLE} t`,
    );
    const out: string[] = [];
    if (snapshot.rows.length !== rows.length) out.push(`${where}: ${rows.length} rows in Postgres, ${snapshot.rows.length} handed to the app`);
    for (const r of rows) {
      const id = appNumber(r.id, "exact");
      const found = snapshot.rows.filter((x) => (x.key as { id?: unknown }).id === id);
      if (found.length !== 1) {
        out.push(`${where}: ${found.length} rows with id ${String(id)}`);
        continue;
      }
      out.push(...appRowMismatches(`${where} id=${r.id} key`, found[0]!.key, r.key, "exact"));
      out.push(...appRowMismatches(`${where} id=${r.id} row`, found[0]!.row, r.row, "exact"));
    }
    return out;
  } finally {
    joining.sub.close();
  }
}

/** A replaying socket (since/epoch): the events after `since`, compared with what Postgres wrote. */
async function replayMismatches(s: Stack, table: string, since: number, expected: Expected[]): Promise<string[]> {
  const sub = await TestSubscriber.connect(stack.worker.url, s.channels[table]!, { since: String(since), epoch: s.epochs[table]! });
  try {
    const events = await eventsAfter(sub, 0, expected.length, `replay of ${s.channels[table]} since ${since}`);
    const out = eventMismatches(`replay since=${since} of ${s.channels[table]}`, events, expected);
    if (events[0]?.seq !== since + 1) out.push(`replay of ${s.channels[table]} since ${since} began at seq ${events[0]?.seq}`);
    return out;
  } finally {
    sub.close();
  }
}

/** The last run's events on the plain channel and what Postgres wrote for them, for {@link checkTheComparisons}. */
let lastRun: { arrived: RawEvent[]; expected: Expected[] } | null = null;

/**
 * One run: every scenario's row inserted (both tables, one transaction), updated (one
 * transaction), then a fresh socket's snapshot compared, then deleted (one transaction); then
 * live frames, a replay from before the run, and both clients compared with Postgres's text.
 * Returns every mismatch, described.
 */
async function runScenarios(s: Stack, scenarios: Scenario[]): Promise<string[]> {
  expect(s.trouble).toEqual([]);
  const out: string[] = [];
  const mark = await barrier(s);
  const expected: Record<string, Expected[]> = { [TABLE]: [], [SHARDED_TABLE]: [] };
  const tables = [TABLE, SHARDED_TABLE];
  await transaction(s.writer, async () => {
    for (const sc of scenarios) for (const table of tables) expected[table]!.push(await insert(s.writer, table, sc));
  });
  await transaction(s.writer, async () => {
    for (const sc of scenarios) for (const table of tables) expected[table]!.push(...(await update(s.writer, table, sc)));
  });
  // Retained rows: once the updates are live, a socket joining now gets them as its snapshot.
  for (const table of tables) {
    const events = await eventsAfter(s.live[table]!, mark.live[table]!, expected[table]!.length, `inserts and updates on ${s.channels[table]}`);
    const rowSeqs = new Map(events.map((e) => [compactJson(jsonMembers(e.data)?.get("key") ?? "null"), e.seq]));
    out.push(...(await snapshotMismatches(s, table, events.at(-1)!.seq, rowSeqs)));
  }
  out.push(...(await clientSnapshotMismatches(s)));
  await transaction(s.writer, async () => {
    for (const sc of scenarios) for (const table of tables) expected[table]!.push(await remove(s.writer, table, sc));
  });
  for (const table of tables) {
    const events = await eventsAfter(s.live[table]!, mark.live[table]!, expected[table]!.length, `every event on ${s.channels[table]}`);
    out.push(...eventMismatches(`live ${s.channels[table]}`, events, expected[table]!));
    const seqs = events.map((e) => e.seq);
    if (!seqs.every((q, i) => q === mark.seq[table]! + 1 + i))
      out.push(`live ${s.channels[table]}: seqs ${seqs.join(",")} after barrier seq ${mark.seq[table]}`);
    out.push(...(await replayMismatches(s, table, mark.seq[table]!, expected[table]!)));
    if (table === TABLE) lastRun = { arrived: events, expected: expected[table]! };
  }
  const n = expected[TABLE]!.length;
  for (const [mode, client, from] of [
    ["exact", s.exact, mark.exact],
    ["bigint", s.bigint, mark.bigint],
  ] as const) {
    await client.until(() => client.seen.events.length >= from + n || undefined, `${n} events (client, ${mode})`, 30_000);
    out.push(...clientMismatches(`client (numbers "${mode}") on ${s.channels[TABLE]}`, client.seen.events.slice(from), expected[TABLE]!, mode));
  }
  return out;
}

/**
 * The comparisons are not vacuous: the last run's events as they really arrived, each changed by
 * one character (a key's last digit, whitespace in a row, a digit of a row's id), are reported.
 */
function checkTheComparisons(): void {
  expect(lastRun).not.toBeNull();
  const { arrived, expected } = lastRun!;
  expect(eventMismatches("sample", arrived, expected)).toEqual([]);
  const corrupt = (i: number, f: (data: string) => string) => arrived.map((e, j) => (j === i ? { ...e, data: f(e.data) } : e));
  // The last digit of the key's id, whitespace inside the new row, a digit of the old row's id, a digit more in the new row's.
  const ins = arrived.findIndex((e) => e.event === "insert");
  const upd = arrived.findIndex((e) => e.event === "update");
  const changes: [number, (d: string) => string][] = [
    [ins, (d) => d.replace(/("key" : \{"id" : -?[0-9]*)([0-9])\}/, (_, a: string, b: string) => `${a}${(Number(b) + 1) % 10}}`)],
    [ins, (d) => d.replace(/"new" : \{"id":/, '"new" : {"id": ')],
    [upd, (d) => d.replace(/("old" : \{"id":-?[0-9]*)([0-9])/, (_, a: string, b: string) => `${a}${(Number(b) + 1) % 10}`)],
    [upd, (d) => d.replace(/("new" : \{"id":-?[0-9]+)/, "$10")],
  ];
  for (const [i, f] of changes) {
    expect(f(arrived[i]!.data)).not.toBe(arrived[i]!.data);
    expect(eventMismatches("sample", corrupt(i, f), expected).length).toBeGreaterThan(0);
  }
  expect(diffText("x", '{"id":9007199254740992}', '{"id":9007199254740993}')).toEqual([
    'x.id (int8 (primary key)): Postgres wrote "9007199254740993", arrived "9007199254740992"',
  ]);
  expect(appRowMismatches("x", { id: 9007199254740992 }, '{"id":9007199254740993}', "exact")).toHaveLength(1);
  expect(appRowMismatches("x", { id: "9007199254740993" }, '{"id":9007199254740993}', "exact")).toEqual([]);
  expect(appRowMismatches("x", { id: 9007199254740993n }, '{"id":9007199254740993}', "bigint")).toEqual([]);
}

for (const mode of ["outbox", "wal", "publication"] as const) {
  describe(`${mode} capture: what Postgres wrote is what arrives`, () => {
    let s: Stack;

    beforeAll(async () => {
      s = await startStack(mode);
    });

    afterAll(async () => {
      await stopStack(s);
    });

    it("carries the extremes (bounds, 2^53, 40-digit numerics, NaN/±Infinity/-0, 10,000 deep and wide, all NULL) byte for byte: live, replayed, retained, sharded, and to the app", async () => {
      expect(await runScenarios(s, FIXED)).toEqual([]);
      checkTheComparisons();
    }, 90_000);

    it("carries json that only json accepts (\\u0000, unpaired surrogate escapes) through insert, update and delete", async () => {
      const out: string[] = [];
      for (const sc of JSON_ONLY) out.push(...(await runScenarios(s, [sc]).catch((err: Error) => [err.message])));
      expect(out).toEqual([]);
    });

    it("carries generated rows of every type byte for byte through insert, update and delete", async () => {
      await fc.assert(
        fc.asyncProperty(scenarios, async (run) => {
          expect(await runScenarios(s, run)).toEqual([]);
        }),
        // No shrinking: each run costs real round trips, and a mismatch already names its column, type and values.
        { numRuns: 20, endOnFailure: true },
      );
    }, 150_000);

    it("replays the channels' whole history from seq 0 exactly as it was sent live", async () => {
      await barrier(s); // everything written so far has arrived live
      for (const table of [TABLE, SHARDED_TABLE]) {
        const liveEvents = rawEvents(s.live[table]!);
        expect(liveEvents.map((e) => e.seq)).toEqual(liveEvents.map((_, i) => i + 1));
        const replay = await TestSubscriber.connect(stack.worker.url, s.channels[table]!, { since: "0", epoch: s.epochs[table]! });
        try {
          const replayed = await eventsAfter(replay, 0, liveEvents.length, `replay of ${s.channels[table]} from 0`);
          const out: string[] = [];
          if (replayed.length !== liveEvents.length) out.push(`${replayed.length} replayed, ${liveEvents.length} live`);
          liveEvents.forEach((e, i) => {
            const r = replayed[i];
            if (!r || r.seq !== e.seq || r.event !== e.event || r.data !== e.data)
              out.push(`seq ${e.seq}: live ${show(e.data)}, replayed ${show(r?.data)}${r ? `; ${firstDifference(r.data, e.data)}` : ""}`);
          });
          expect(out).toEqual([]);
        } finally {
          replay.close();
        }
      }
      // The clients saw every event of the plain channel, in order.
      const seqs = rawEvents(s.live[TABLE]!).map((e) => e.seq);
      expect(s.exact.seen.events.map((e) => e.seq)).toEqual(seqs);
      expect(s.bigint.seen.events.map((e) => e.seq)).toEqual(seqs);
      expect(s.trouble).toEqual([]); // the live sockets stayed connected throughout
    });
  });
}
