/**
 * relay/pgjson.ts: Postgres's to_json rebuilt from output texts (what pgoutput sends). Values of
 * many types are generated (fast-check), inserted into tables through their input functions, and
 * read back in one session set to TEXT_OUTPUT_SETTINGS: each value's output text, converted,
 * must be `to_json(value)::text` from that same session character for character, and each row's
 * texts must give `to_json(t.*)::text`. Also fixed edge cases, the type catalog (domains, arrays,
 * composites with dropped attributes, query counts, built-ins checked against pg_type), and the
 * one category the text cannot answer (a type with its own cast to json).
 *
 * Texts are read with every type parser switched off, not with `col::text`: a cast to text is not
 * always the output function (bool::text is `true` where boolout writes `t`, char(n)::text drops
 * the padding, inet::text always shows the netmask), and pgoutput sends the output function's.
 */
import fc from "fast-check";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  builtinTypes,
  type JsonCategory,
  PgJsonError,
  type PgType,
  rowToJson,
  TEXT_OUTPUT_SETTINGS,
  TypeCatalog,
  textOutputOptions,
  textToJson,
} from "../../relay/pgjson.ts";
import type { Queryable } from "../../relay/serial.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";

let db: TestDatabase;
let client: pg.Client;
let catalog: TypeCatalog;

/** Every column as the text its type's output function wrote, as pgoutput sends it. */
const RAW = { getTypeParser: () => (text: string) => text };

async function raw(text: string, values?: unknown[]): Promise<Record<string, string | null>[]> {
  return (await client.query<Record<string, string | null>>({ text, values, types: RAW })).rows;
}

async function rawArrays(text: string, values?: unknown[]): Promise<(string | null)[][]> {
  return (await client.query<(string | null)[]>({ text, values, types: RAW, rowMode: "array" })).rows;
}

const SCHEMA = `
create type mood as enum ('happy', 'sad', 'a"b', 'with space', 'ünï', 'NULL', '{x}', 'back\\slash');
create domain posnum as numeric check (value = value);
create domain label as text check (value <> 'forbidden');
create domain label2 as label;
create domain intarr as int4[];
create type inner_t as (x int8, gone text, label label2, at timestamptz, d date);
alter type inner_t drop attribute gone;
create type outer_t as (id int4, "inner" inner_t, tags text[], ratio float8, ok bool, doc jsonb, mood mood, "we""ird, name" text, later int4);
alter type outer_t drop attribute later;
create domain outer_d as outer_t;
`;

beforeAll(async () => {
  db = await testDatabase("pgjson");
  client = await db.client();
  // The session the texts come from, as the relay's replication connection.
  for (const [name, value] of Object.entries(TEXT_OUTPUT_SETTINGS)) await client.query("select set_config($1, $2, false)", [name, value]);
  await client.query(SCHEMA);
  catalog = new TypeCatalog(client);
});

afterAll(async () => {
  await client?.end();
  await db?.drop();
});

async function typeOf(sqlType: string): Promise<PgType> {
  const [row] = await raw("select $1::regtype::oid as oid", [sqlType]);
  return catalog.get(Number(row!.oid));
}

// ---------------------------------------------------------------------------------------------
// Generated values, as texts in each type's input syntax
// ---------------------------------------------------------------------------------------------

const opt = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: null, freq: 6 });
const pad = (n: number, width: number) => String(n).padStart(width, "0");
const codePoints = (text: string, max: number) => Array.from(text).slice(0, max).join("");

const int2 = fc.oneof(fc.constantFrom("-32768", "32767", "0", "-1"), fc.integer({ min: -32768, max: 32767 }).map(String));
const int4 = fc.oneof(fc.constantFrom("-2147483648", "2147483647", "0"), fc.integer().map(String));
const int8 = fc.oneof(
  fc.constantFrom("-9223372036854775808", "9223372036854775807", "9007199254740993", "-9007199254740993", "9007199254740992"),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
);
const numeric = fc.oneof(
  fc.constantFrom("NaN", "Infinity", "-Infinity", "0", "-0", "0.000", "1e-30", "-1.5E+40", "12345678901234567890.12345678901234567890"),
  fc
    .tuple(fc.constantFrom("", "-", "+"), fc.stringMatching(/^[0-9]{1,45}$/), fc.option(fc.stringMatching(/^[0-9]{0,45}$/), { nil: undefined }))
    .map(([sign, whole, fraction]) => (fraction === undefined ? `${sign}${whole}` : `${sign}${whole}.${fraction}`)),
);
const floatText = (x: number) => (Number.isNaN(x) ? "NaN" : Object.is(x, -0) ? "-0" : String(x));
const float4 = fc.oneof(fc.constantFrom("NaN", "Infinity", "-Infinity", "-0", "1.4e-45", "3.4028235e38", "1.1754942e-38", "0.1"), fc.float().map(floatText));
const float8 = fc.oneof(
  fc.constantFrom("NaN", "Infinity", "-Infinity", "-0", "5e-324", "1.7976931348623157e308", "2.225073858507201e-308", "0.1", "1e21", "1e-7"),
  fc.double().map(floatText),
);
const bool = fc.constantFrom("t", "f", "true", "false", "yes", "off", "1", "0");

/** Every plane, controls (no NUL: Postgres text cannot hold it), JSON's and arrays' specials. */
const SPECIALS = [
  '"',
  "\\",
  "\u2028",
  "\u2029",
  "\u007f",
  "\b",
  "\f",
  "\n",
  "\r",
  "\t",
  "\u0001",
  "\u001b",
  "\u001f",
  "{",
  "}",
  ",",
  ";",
  " ",
  "NULL",
  "(",
  ")",
  "'",
  "😀",
  "\uffff",
  "\u{10ffff}",
  "\u{1d11e}",
  "\u{e0001}",
  "é",
  "\u0085",
  "\u00a0",
  "\u200b",
];
const text = fc
  .array(fc.oneof(fc.constantFrom(...SPECIALS), fc.string({ unit: "binary", maxLength: 8 }), fc.string({ unit: "grapheme", maxLength: 4 })), { maxLength: 10 })
  // biome-ignore lint/suspicious/noControlCharactersInRegex: Postgres text cannot hold NUL
  .map((parts) => parts.join("").replace(/\u0000/g, ""));
const label = text.filter((t) => t !== "forbidden");

const jsonDoc = fc.oneof(
  fc
    .tuple(fc.jsonValue({ maxDepth: 4, stringUnit: "binary" }), fc.constantFrom(undefined, 1, "\t", "  "))
    .map(([value, indent]) => JSON.stringify(value, null, indent)),
  fc.constantFrom(
    ' {"a" : 1 , "a": 2} ',
    "[1e400, -0, 0.10, 1E-7, -1.5e+3]",
    '"\\u00e9\\ud83d\\ude00\\n\\"x\\" \\u2028"',
    "null",
    "true",
    "\t\n[ ]\n",
    '{"\\u0000": "\\u0000"}',
    '"\\/"',
  ),
);
const jsonbDoc = jsonDoc.filter((t) => !t.includes("\\u0000"));
const bytea = fc.oneof(
  fc.uint8Array({ maxLength: 24 }).map((b) => `\\x${Buffer.from(b).toString("hex")}`),
  fc.constantFrom("", "abc\\\\def", "\\000\\377"),
);

const dateParts = (maxYear: number) =>
  fc
    .record({ bc: fc.boolean(), year: fc.integer({ min: 1, max: maxYear }), month: fc.integer({ min: 1, max: 12 }), day: fc.integer({ min: 1, max: 28 }) })
    .map((d) => ({
      ...d,
      year: d.bc ? Math.min(d.year, 4713) : d.year,
    }));
const timeText = fc
  .record({
    h: fc.integer({ min: 0, max: 23 }),
    m: fc.integer({ min: 0, max: 59 }),
    s: fc.integer({ min: 0, max: 59 }),
    frac: fc.stringMatching(/^[0-9]{0,6}$/),
  })
  .map(({ h, m, s, frac }) => `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${frac ? `.${frac}` : ""}`);
const date = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "epoch", "4714-11-24 BC", "5874897-12-31", "0001-01-01", "0001-12-31 BC", "2024-02-29"),
  dateParts(300_000).map(({ bc, year, month, day }) => `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}${bc ? " BC" : ""}`),
);
const timestamp = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "4714-11-24 00:00:00 BC", "294276-12-31 23:59:59.999999", "2024-01-01 00:00:00.123", "1999-12-31 23:59:60"),
  fc.tuple(dateParts(294_275), timeText).map(([{ bc, year, month, day }, time]) => `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)} ${time}${bc ? " BC" : ""}`),
);
const ZONES = [
  "",
  "+00",
  "Z",
  "+05:30",
  "-03",
  "+14",
  "-12:45",
  "+01:02:03",
  " America/New_York",
  " Asia/Kathmandu",
  " Europe/Amsterdam",
  " UTC",
  " Australia/Lord_Howe",
];
const timestamptz = fc.oneof(
  fc.constantFrom("infinity", "-infinity", "2024-01-01 00:00:00.123+00", "1883-11-18 12:00:00 America/New_York", "0044-03-15 12:00:00+02 BC"),
  fc
    .tuple(dateParts(294_275), timeText, fc.constantFrom(...ZONES))
    .map(([{ bc, year, month, day }, time, zone]) => `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)} ${time}${zone}${bc ? " BC" : ""}`),
);
const time = fc.oneof(fc.constantFrom("24:00:00", "allballs", "00:00:00.000001"), timeText);
const timetz = fc
  .tuple(fc.oneof(fc.constantFrom("24:00:00", "00:00:00.000001"), timeText), fc.constantFrom("+00", "+05:30", "-03", "+14", "-15:59", "+01:02:03"))
  .map(([t, zone]) => `${t}${zone}`);
const interval = fc.oneof(
  fc.constantFrom("0", "1 microsecond", "@ 1 minute ago", "P1Y2M3DT4H5M6.5S", "-178000000 years", "1 day -00:00:00.000001", "2147483647 days"),
  fc
    .record({
      y: fc.integer({ min: -5000, max: 5000 }),
      mo: fc.integer({ min: -200, max: 200 }),
      d: fc.integer({ min: -10000, max: 10000 }),
      neg: fc.boolean(),
      time: timeText,
    })
    .map(({ y, mo, d, neg, time }) => `${y} years ${mo} mons ${d} days ${neg ? "-" : ""}${time}`),
);
const inet = fc.oneof(
  fc.tuple(fc.ipV4(), fc.option(fc.integer({ min: 0, max: 32 }), { nil: undefined })).map(([ip, mask]) => (mask === undefined ? ip : `${ip}/${mask}`)),
  fc.tuple(fc.ipV6(), fc.option(fc.integer({ min: 0, max: 128 }), { nil: undefined })).map(([ip, mask]) => (mask === undefined ? ip : `${ip}/${mask}`)),
);
const money = fc.oneof(
  fc.constantFrom("-92233720368547758.08", "92233720368547758.07", "0", "-0.01"),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((cents) => {
    const abs = cents < 0n ? -cents : cents;
    return `${cents < 0n ? "-" : ""}${abs / 100n}.${pad(Number(abs % 100n), 2)}`;
  }),
);
const mood = fc.constantFrom("happy", "sad", 'a"b', "with space", "ünï", "NULL", "{x}", "back\\slash");
const box = fc
  .tuple(
    fc.oneof(fc.double({ noNaN: true }), fc.constantFrom(Number.NaN, -0)),
    fc.double({ noNaN: true }),
    fc.double({ noNaN: true }),
    fc.double({ noNaN: true }),
  )
  .map((c) => {
    const [x1, y1, x2, y2] = c.map(floatText);
    return `(${x1},${y1}),(${x2},${y2})`;
  });

/** array_in syntax: every element quoted (quotes and backslashes escaped), NULL bare. */
const quoteElement = (item: string | null) => (item === null ? "NULL" : `"${item.replace(/["\\]/g, "\\$&")}"`);
const arrayLiteral = (items: readonly (string | null)[], delimiter = ",") => `{${items.map(quoteElement).join(delimiter)}}`;
const arrayOf = (element: fc.Arbitrary<string>, delimiter = ",") => fc.array(opt(element), { maxLength: 6 }).map((items) => arrayLiteral(items, delimiter));
/** record_in syntax: every value quoted, NULL as nothing. */
const recordLiteral = (fields: readonly (string | null)[]) => `(${fields.map((f) => (f === null ? "" : `"${f.replace(/["\\]/g, "\\$&")}"`)).join(",")})`;

/** 1-D or 2-D arrays whose lower bounds are not all 1 (array_out writes `[lb:ub]...=`). */
const boundedInt4Array = fc
  .record({
    dims: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 2 }),
    lowers: fc.array(fc.integer({ min: -5, max: 5 }), { minLength: 2, maxLength: 2 }),
    items: fc.array(opt(int4), { minLength: 9, maxLength: 9 }),
  })
  .map(({ dims, lowers, items }) => {
    const bounds = dims.map((n, i) => `[${lowers[i]!}:${lowers[i]! + n - 1}]`).join("");
    const body =
      dims.length === 1
        ? arrayLiteral(items.slice(0, dims[0]!))
        : `{${Array.from({ length: dims[0]! }, (_, r) => arrayLiteral(items.slice(r * dims[1]!, (r + 1) * dims[1]!))).join(",")}}`;
    return `${bounds}=${body}`;
  });
const twoDimInt8 = fc
  .record({ rows: fc.integer({ min: 1, max: 3 }), cols: fc.integer({ min: 1, max: 3 }), items: fc.array(opt(int8), { minLength: 9, maxLength: 9 }) })
  .map(({ rows, cols, items }) => `{${Array.from({ length: rows }, (_, r) => arrayLiteral(items.slice(r * cols, (r + 1) * cols))).join(",")}}`);
const textElements = fc.oneof(text, fc.constantFrom("", "NULL", "null", " ", "{", "}", ",", '"', "\\", "a b", "{1,2}"));

const inner = fc.tuple(opt(int8), opt(label), opt(timestamptz), opt(date)).map(recordLiteral);
const outer = fc.tuple(opt(int4), opt(inner), opt(arrayOf(textElements)), opt(float8), opt(bool), opt(jsonbDoc), opt(mood), opt(text)).map(recordLiteral);

interface Family {
  /** SQL type of the column. */
  sql: string;
  /** Texts in the type's input syntax. */
  value: fc.Arbitrary<string>;
  /** The category the catalog must give the type. */
  category: JsonCategory;
  /** SQL reading text `u` as the type, when `u::<sql>` is not it. */
  input?: (u: string) => string;
}

const FAMILIES: Family[] = [
  { sql: "int2", value: int2, category: "numeric" },
  { sql: "int4", value: int4, category: "numeric" },
  { sql: "int8", value: int8, category: "numeric" },
  { sql: "numeric", value: numeric, category: "numeric" },
  { sql: "float4", value: float4, category: "numeric" },
  { sql: "float8", value: float8, category: "numeric" },
  { sql: "bool", value: bool, category: "bool" },
  { sql: "text", value: text, category: "other" },
  { sql: "varchar(30)", value: text.map((t) => codePoints(t, 30)), category: "other" },
  { sql: "char(5)", value: text.map((t) => codePoints(t, 5)), category: "other" },
  { sql: "json", value: jsonDoc, category: "json" },
  { sql: "jsonb", value: jsonbDoc, category: "json" },
  { sql: "bytea", value: bytea, category: "other" },
  { sql: "uuid", value: fc.uuid(), category: "other" },
  { sql: "date", value: date, category: "date" },
  { sql: "timestamp", value: timestamp, category: "timestamp" },
  { sql: "timestamptz", value: timestamptz, category: "timestamptz" },
  { sql: "time", value: time, category: "other" },
  { sql: "timetz", value: timetz, category: "other" },
  { sql: "interval", value: interval, category: "other" },
  { sql: "inet", value: inet, category: "other" },
  { sql: "cidr", value: inet, category: "other", input: (u) => `network(${u}::inet)` },
  { sql: "money", value: money, category: "other", input: (u) => `${u}::numeric::money` },
  { sql: "mood", value: mood, category: "other" },
  { sql: "posnum", value: numeric, category: "numeric" },
  { sql: "label2", value: label, category: "other" },
  { sql: "int4[]", value: fc.oneof(arrayOf(int4), boundedInt4Array), category: "array" },
  { sql: "text[]", value: arrayOf(textElements), category: "array" },
  { sql: "int8[]", value: twoDimInt8, category: "array" },
  { sql: "float8[]", value: arrayOf(float8), category: "array" },
  { sql: "numeric[]", value: arrayOf(numeric), category: "array" },
  { sql: "box[]", value: arrayOf(box, ";"), category: "array" },
  { sql: "timestamptz[]", value: arrayOf(timestamptz), category: "array" },
  { sql: "timestamp[]", value: arrayOf(timestamp), category: "array" },
  { sql: "date[]", value: arrayOf(date), category: "array" },
  { sql: "json[]", value: arrayOf(jsonDoc), category: "array" },
  { sql: "jsonb[]", value: arrayOf(jsonbDoc), category: "array" },
  { sql: "bool[]", value: arrayOf(bool), category: "array" },
  { sql: "bytea[]", value: arrayOf(bytea), category: "array" },
  { sql: "uuid[]", value: arrayOf(fc.uuid()), category: "array" },
  { sql: "mood[]", value: arrayOf(mood), category: "array" },
  { sql: "interval[]", value: arrayOf(interval), category: "array" },
  { sql: "char(3)[]", value: arrayOf(text.map((t) => codePoints(t, 3))), category: "array" },
  { sql: "intarr", value: arrayOf(int4), category: "array" },
  { sql: "posnum[]", value: arrayOf(numeric), category: "array" },
  { sql: "inner_t", value: inner, category: "composite" },
  { sql: "outer_t", value: outer, category: "composite" },
  { sql: "outer_d", value: outer, category: "composite" },
  { sql: "outer_t[]", value: fc.array(opt(outer), { maxLength: 3 }).map((items) => arrayLiteral(items)), category: "array" },
  { sql: "inner_t[]", value: arrayOf(inner), category: "array" },
];

const inputOf = (family: Family, u: string) => (family.input ? family.input(u) : `${u}::${family.sql}`);

describe("textToJson and rowToJson against Postgres's to_json", () => {
  FAMILIES.forEach((family, index) => {
    it(`${family.sql}: every generated value and its row`, async () => {
      const table = `f_${index}`;
      await client.query(`create table ${table} (id int4 generated always as identity, v ${family.sql})`);
      const type = await typeOf(family.sql);
      expect(type.kind.category).toBe(family.category);
      const columns = [
        { name: "id", type: await typeOf("int4") },
        { name: "v", type },
      ];
      let compared = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(opt(family.value), { minLength: 1, maxLength: 16 }), async (values) => {
          await client.query(`insert into ${table} (v) select ${inputOf(family, "u")} from unnest($1::text[]) u`, [values]);
          // The row's own text and Postgres's JSON of it, from the same session; deleted as read.
          const rows = await raw(`delete from ${table} t returning t.id, t.v, coalesce(to_json(t.v)::text, 'null') as json, to_json(t.*)::text as row_json`);
          expect(rows).toHaveLength(values.length);
          for (const row of rows) {
            expect({ text: row.v, json: textToJson(row.v ?? null, type) }).toEqual({ text: row.v, json: row.json });
            expect(rowToJson([row.id ?? null, row.v ?? null], columns)).toBe(row.row_json);
            compared++;
          }
        }),
        { numRuns: 50 },
      );
      expect(compared).toBeGreaterThan(150);
    });
  });

  it("a row of every family at once, its columns as the catalog gives them (a dropped column left out)", async () => {
    const names = FAMILIES.map((_, i) => `c${i}`);
    await client.query(
      `create table wide (id int4 generated always as identity, gone text, ${FAMILIES.map((f, i) => `${names[i]} ${f.sql}`).join(", ")}, "we""ird, ""name" text)`,
    );
    await client.query("alter table wide drop column gone");
    const attrs = await raw("select attname, atttypid from pg_attribute where attrelid = 'wide'::regclass and attnum > 0 and not attisdropped order by attnum");
    const types = await catalog.getMany(attrs.map((a) => Number(a.atttypid)));
    const columns = attrs.map((a, i) => ({ name: a.attname!, type: types[i]! }));
    await fc.assert(
      fc.asyncProperty(fc.tuple(...FAMILIES.map((f) => opt(f.value))), opt(text), async (values, last) => {
        const params = [...values, last];
        const inputs = FAMILIES.map((f, i) => inputOf(f, `$${i + 1}::text`));
        await client.query(`insert into wide (${names.join(", ")}, "we""ird, ""name") values (${inputs.join(", ")}, $${params.length})`, params);
        const rows = await rawArrays("delete from wide t returning to_json(t.*)::text, t.*");
        expect(rows).toHaveLength(1);
        const [rowJson, ...texts] = rows[0]!;
        expect(rowToJson(texts, columns)).toBe(rowJson);
      }),
      { numRuns: 100 },
    );
  });
});

/** Reads pgoutput protocol 1 messages: a Relation's columns, an Insert's column texts. */
function readPgoutput(
  message: Buffer,
): { kind: "relation"; columns: { name: string; typeOid: number }[] } | { kind: "insert"; values: (string | null)[] } | null {
  let at = 1;
  const int16 = () => {
    at += 2;
    return message.readInt16BE(at - 2);
  };
  const int32 = () => {
    at += 4;
    return message.readUInt32BE(at - 4);
  };
  const cstring = () => {
    const end = message.indexOf(0, at);
    const s = message.toString("utf8", at, end);
    at = end + 1;
    return s;
  };
  const tag = String.fromCharCode(message[0]!);
  if (tag === "R") {
    int32(); // relation oid
    cstring(); // namespace
    cstring(); // name
    at += 1; // replica identity
    const columns = Array.from({ length: int16() }, () => {
      at += 1; // flags
      const name = cstring();
      const typeOid = int32();
      int32(); // typmod
      return { name, typeOid };
    });
    return { kind: "relation", columns };
  }
  if (tag === "I") {
    int32(); // relation oid
    at += 1; // 'N'
    const values = Array.from({ length: int16() }, () => {
      const kind = String.fromCharCode(message[at++]!);
      if (kind === "n") return null;
      if (kind !== "t") throw new Error(`column kind ${kind}`);
      const length = int32();
      at += length;
      return message.toString("utf8", at - length, at);
    });
    return { kind: "insert", values };
  }
  return null;
}

describe("through pgoutput itself", () => {
  it("rows decoded by pgoutput (its Relation columns, its Insert texts) give to_json(t.*) of the same rows", async () => {
    // pg_logical_slot_get_binary_changes runs pgoutput in this session, with its settings, as the
    // walsender runs it with the replication connection's. It decodes up to the flushed WAL only:
    // commits here wait for the flush (the test Postgres may run with synchronous_commit off).
    await client.query("set synchronous_commit = on");
    const names = FAMILIES.map((_, i) => `c${i}`);
    await client.query(`create table decoded (id int4 generated always as identity, gone text, ${FAMILIES.map((f, i) => `${names[i]} ${f.sql}`).join(", ")})`);
    await client.query("alter table decoded drop column gone");
    await client.query("create publication decoded_pub for table decoded with (publish = 'insert')");
    await client.query("select pg_create_logical_replication_slot('pgjson_decoded', 'pgoutput')");
    let rows = 0;
    // pgoutput sends a relation's columns once, before its first change, and again only when they
    // change; a receiver keeps them.
    let columns: { name: string; type: PgType }[] = [];
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(...FAMILIES.map((f) => opt(f.value))), { minLength: 1, maxLength: 3 }), async (batch) => {
        const expected: string[] = [];
        for (const values of batch) {
          const inputs = FAMILIES.map((f, i) => inputOf(f, `$${i + 1}::text`));
          const [row] = await raw(`insert into decoded (${names.join(", ")}) values (${inputs.join(", ")}) returning to_json(decoded.*)::text as json`, values);
          expected.push(row!.json!);
        }
        const changes = await raw(
          "select data from pg_logical_slot_get_binary_changes('pgjson_decoded', null, null, 'proto_version', '1', 'publication_names', 'decoded_pub')",
        );
        const actual: string[] = [];
        for (const change of changes) {
          const message = readPgoutput(Buffer.from(change.data!.slice(2), "hex"));
          if (message?.kind === "relation") {
            const types = await catalog.getMany(message.columns.map((c) => c.typeOid));
            columns = message.columns.map((c, i) => ({ name: c.name, type: types[i]! }));
          } else if (message?.kind === "insert") {
            actual.push(rowToJson(message.values, columns));
          }
        }
        expect(columns.map((c) => c.name)).toEqual(["id", ...names]);
        expect(actual).toEqual(expected);
        rows += batch.length;
      }),
      { numRuns: 40 },
    );
    expect(rows).toBeGreaterThan(40);
    await client.query("select pg_drop_replication_slot('pgjson_decoded')");
  });
});

describe("fixed cases", () => {
  const CASES: [string, string][] = [
    ["'9007199254740993'::int8", "9007199254740993"],
    ["'-9223372036854775808'::int8", "-9223372036854775808"],
    ["'12345678901234567890.12345678901234567890'::numeric", "12345678901234567890.12345678901234567890"],
    ["'NaN'::numeric", '"NaN"'],
    ["'-Infinity'::numeric", '"-Infinity"'],
    ["'NaN'::float8", '"NaN"'],
    ["'Infinity'::float4", '"Infinity"'],
    ["'-0'::float8", "-0"],
    ["'5e-324'::float8", "5e-324"],
    ["'1e100'::float8", "1e+100"],
    ["'0.1'::float4", "0.1"],
    ["true", "true"],
    ["false", "false"],
    ["'a\"b\\c' || chr(1) || chr(31) || chr(127) || chr(8232) || E'\\b\\f\\n\\r\\t'", '"a\\"b\\\\c\\u0001\\u001f\u007f\u2028\\b\\f\\n\\r\\t"'],
    ["'ab'::char(4)", '"ab  "'],
    ["'2024-01-01 00:00:00.123+00'::timestamptz", '"2024-01-01T00:00:00.123+00:00"'],
    ["'2024-01-01 00:00:00'::timestamptz", '"2024-01-01T00:00:00+00:00"'],
    ["'0044-03-15 12:00:00.5 BC'::timestamp", '"0044-03-15T12:00:00.5 BC"'],
    ["'294276-12-31 23:59:59.999999'::timestamp", '"294276-12-31T23:59:59.999999"'],
    ["'infinity'::timestamptz", '"infinity"'],
    ["'-infinity'::timestamp", '"-infinity"'],
    ["'0044-03-15 BC'::date", '"0044-03-15 BC"'],
    ["'5874897-12-31'::date", '"5874897-12-31"'],
    ["'12:00:00+05:30'::timetz", '"12:00:00+05:30"'],
    ["'{1,2,NULL}'::int4[]", "[1,2,null]"],
    ["'{}'::int4[]", "[]"],
    ["'[2:3]={1,2}'::int4[]", "[1,2]"],
    ["'[0:1][-1:0]={{1,2},{3,4}}'::int4[]", "[[1,2],[3,4]]"],
    ["'{{{1},{2}},{{3},{4}}}'::int4[]", "[[[1],[2]],[[3],[4]]]"],
    [`'{"a b","",NULL,"NULL","null","x\\\\\\"y","{}",","}'::text[]`, '["a b","",null,"NULL","null","x\\\\\\"y","{}",","]'],
    ["array['(1,1),(0,0)'::box, null, '(2,2),(1,1)']", '["(1,1),(0,0)",null,"(2,2),(1,1)"]'],
    ["array['2024-01-01'::timestamptz, '2024-01-01 BC'::date::timestamptz]", '["2024-01-01T00:00:00+00:00","2024-01-01T00:00:00+00:00 BC"]'],
    ["array['{\"a\": [1, 2]}'::jsonb, 'null', '\"NULL\"']", '[{"a": [1, 2]},null,"NULL"]'],
    ["' {\"a\" : 1} '::json", ' {"a" : 1} '],
    ["(repeat('[', 5000) || repeat(']', 5000))::json", "[".repeat(5000) + "]".repeat(5000)], // copied, never parsed
    ["'1 -2 3'::int2vector", "[1,-2,3]"],
    ["''::int2vector", "[]"],
    ["'3 4'::oidvector", '["3","4"]'],
    ['\'{"1 2","3"}\'::int2vector[]', "[[1,2],[3]]"],
    ['\'(1,"a b","2024-01-01 00:00:00+00",)\'::inner_t', '{"x":1,"label":"a b","at":"2024-01-01T00:00:00+00:00","d":null}'],
    ["row(null, null, null, null)::inner_t", '{"x":null,"label":null,"at":null,"d":null}'],
    ["array[row(1, '\"q\" \\', null, '0001-01-01 BC')::inner_t, null]", '[{"x":1,"label":"\\"q\\" \\\\","at":null,"d":"0001-01-01 BC"},null]'],
    ["'{1,2}'::intarr", "[1,2]"],
    ["'5.50'::posnum", "5.50"],
    ["'with space'::mood", '"with space"'],
    ["'\\x00ff'::bytea", '"\\\\x00ff"'],
    ["'1 day 02:03:04'::interval", '"1 day 02:03:04"'],
    ["'1.2.3.4'::inet", '"1.2.3.4"'],
    ["'1.2.3.4/32'::cidr", '"1.2.3.4/32"'],
    ["null::int4", "null"],
  ];

  it("each converts to to_json's text, and that text is the one expected", async () => {
    for (const [expr, expected] of CASES) {
      const [row] = await raw(`select v, coalesce(to_json(v)::text, 'null') as json, pg_typeof(v)::oid as oid from (select ${expr} as v) s`);
      const type = await catalog.get(Number(row!.oid));
      const json = textToJson(row!.v ?? null, type);
      expect(json, expr).toBe(row!.json);
      expect(json, expr).toBe(expected);
    }
  });

  it("null is null; a row has no spaces and escapes its names", async () => {
    const int4 = await typeOf("int4");
    expect(textToJson(null, int4)).toBe("null");
    expect(
      rowToJson(
        ["1", null],
        [
          { name: 'a"\n', type: int4 },
          { name: "b", type: int4 },
        ],
      ),
    ).toBe('{"a\\"\\n":1,"b":null}');
    expect(() => rowToJson(["1"], [])).toThrow(PgJsonError);
  });

  it("texts not of the output function's form under TEXT_OUTPUT_SETTINGS are refused, not guessed", async () => {
    const bad: [string, string][] = [
      ["bool", "true"],
      ["timestamptz", "Mon Jan 01 00:00:00 2024 UTC"], // DateStyle Postgres
      ["timestamp", "01/01/2024 00:00:00"], // DateStyle SQL
      ["timestamp", "2024-01-01 00:00:00+00"], // an offset on a timestamp
      ["date", "01.01.2024"], // DateStyle German
      ["int4[]", "1 2"], // only int2vector and oidvector are written without braces
      ["int4[]", "{1,2"],
      ["int4[]", "{1,2}}"],
      ["int4[]", "{1,}"],
      ["int4[]", '{"1}'],
      ["inner_t", "(1,2)"], // fewer values than attributes
      ["inner_t", "(1,,,,)"], // more
      ["inner_t", "1,,,"],
    ];
    for (const [sqlType, text] of bad) {
      const type = await typeOf(sqlType);
      expect(() => textToJson(text, type), `${sqlType} ${text}`).toThrow(PgJsonError);
    }
  });

  it("reading `col::text` instead of the output text would be wrong for some types", async () => {
    const [row] = await raw(
      "select true as b, true::text as bt, 'a'::char(3) as c, 'a'::char(3)::text as ct, '1.2.3.4'::inet as i, '1.2.3.4'::inet::text as it",
    );
    expect(row).toEqual({ b: "t", bt: "true", c: "a  ", ct: "a", i: "1.2.3.4", it: "1.2.3.4/32" });
  });

  it("textOutputOptions() gives a connection TEXT_OUTPUT_SETTINGS at startup", async () => {
    const other = new pg.Client({ connectionString: db.url, options: textOutputOptions() });
    await other.connect();
    try {
      for (const [name, value] of Object.entries(TEXT_OUTPUT_SETTINGS)) {
        const { rows } = await other.query<{ v: string }>("select current_setting($1) as v", [name]);
        expect(rows[0]!.v, name).toBe(value);
      }
    } finally {
      await other.end();
    }
  });
});

describe("TypeCatalog", () => {
  /** A Queryable counting its queries. */
  function counting(): Queryable & { count: number } {
    const q = {
      count: 0,
      query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
        q.count++;
        return client.query<R>(text, values);
      },
    };
    return q;
  }

  it("its built-in types are the catalog's, as loaded in one query", async () => {
    const bare = new TypeCatalog(counting(), { builtins: false });
    const oids = [...builtinTypes().keys()];
    const loaded = await bare.getMany(oids);
    expect(loaded).toEqual(oids.map((oid) => builtinTypes().get(oid)));
    expect(bare.queries).toBe(1);
  });

  it("loads a type and everything it needs in one query, each type once, concurrent requests shared", async () => {
    const db = counting();
    const types = new TypeCatalog(db);
    const [outerArray] = await raw(
      "select 'outer_t[]'::regtype::oid as a, 'inner_t'::regtype::oid as i, 'outer_d'::regtype::oid as d, 'int4[]'::regtype::oid as b",
    );
    const [a, , b] = await Promise.all([types.get(Number(outerArray!.a)), types.get(Number(outerArray!.a)), types.get(Number(outerArray!.b))]);
    expect(db.count).toBe(1); // int4[] is built in
    expect(types.peek(Number(outerArray!.i))).toBeDefined(); // came with outer_t[]
    expect(a!.kind.category).toBe("array");
    expect(b!.kind).toEqual({ category: "array", element: expect.objectContaining({ oid: 23, kind: { category: "numeric" } }), delimiter: "," });
    const outer = a!.kind.category === "array" ? a!.kind.element : null;
    expect(outer?.kind.category === "composite" && outer.kind.attributes.map((x) => [x.name, x.type.name, x.type.kind.category])).toEqual([
      ["id", "int4", "numeric"],
      ["inner", "public.inner_t", "composite"],
      ["tags", "_text", "array"],
      ["ratio", "float8", "numeric"],
      ["ok", "bool", "bool"],
      ["doc", "jsonb", "json"],
      ["mood", "public.mood", "other"],
      ['we"ird, name', "text", "other"],
    ]);
    await types.get(Number(outerArray!.i));
    expect(db.count).toBe(1);
    // A domain over the composite: its own name, its base's kind, one more query.
    const domain = await types.get(Number(outerArray!.d));
    expect(domain.name).toBe("public.outer_d");
    expect(domain.kind).toStrictEqual(outer!.kind);
    expect(db.count).toBe(2);
  });

  it("resolves domains to their base, through domains over domains", async () => {
    expect((await typeOf("label2")).kind).toEqual({ category: "other" });
    expect((await typeOf("posnum")).kind).toEqual({ category: "numeric" });
    expect((await typeOf("intarr")).kind.category).toBe("array");
    await expect(catalog.get(999_999_999)).rejects.toThrow(PgJsonError);
  });

  it("after ALTER TYPE, clear() and a reload see the new attributes", async () => {
    await client.query("create type grows as (a int4)");
    const types = new TypeCatalog(client);
    const [row] = await raw("select 'grows'::regtype::oid as oid, row(1)::grows as v");
    const before = await types.get(Number(row!.oid));
    expect(textToJson(row!.v!, before)).toBe('{"a":1}');
    await client.query("alter type grows add attribute b text");
    const [after] = await raw("select row(1, 'x')::grows as v, to_json(row(1, 'x')::grows)::text as json");
    expect(() => textToJson(after!.v!, before)).toThrow(PgJsonError);
    types.clear();
    expect(textToJson(after!.v!, await types.get(Number(row!.oid)))).toBe(after!.json);
  });

  it("a type with its own cast to json is category cast: its text as a JSON string, which is not what to_json writes", async () => {
    await client.query(`
      create type castme as enum ('a', 'b');
      create function castme_json(castme) returns json language sql immutable as $$ select json_build_object('castme', $1::text) $$;
      create cast (castme as json) with function castme_json(castme);`);
    const type = await typeOf("castme");
    expect(type.kind).toEqual({ category: "cast" });
    const [row] = await raw("select 'a'::castme as v, to_json('a'::castme)::text as json, to_json(array['a'::castme])::text as arr");
    expect(textToJson(row!.v!, type)).toBe('"a"');
    expect(row!.json).toBe('{"castme" : "a"}'); // to_json called the cast; the text cannot tell
    expect(row!.arr).toBe('[{"castme" : "a"}]');
  });
});
