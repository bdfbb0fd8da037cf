/**
 * JSON kept as text. Event data is the JSON text Postgres produced, and the edge stores, replays,
 * snapshots and frames it by string assembly: `JSON.parse` would round a bigint past 2^53 or a
 * 40-digit numeric and turn `1e400` into Infinity, and `JSON.stringify` and structured clone (a
 * Durable Object RPC argument) recurse, so a value nested some thousands deep throws. What has to
 * look inside a value (the ingest envelope, a change event's op and key, a filter) scans the text
 * instead. Every scanner here is iterative: depth costs a slot in an array, never a stack frame.
 */

const WHITESPACE = /[ \t\n\r]*/y;
/** A run of string characters that need no checking: not a quote, a backslash or a control character. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: JSON strings may not hold raw control characters
const PLAIN_CHARS = /[^"\\\u0000-\u001f]*/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const ESCAPE = /\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})/y;

const QUOTE = 0x22;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

function skipWhitespace(text: string, pos: number): number {
  if (text.charCodeAt(pos) > 0x20) return pos; // the common case, without a regex call
  WHITESPACE.lastIndex = pos;
  WHITESPACE.test(text);
  return WHITESPACE.lastIndex;
}

/** Index just past the string whose opening quote is at `pos`, or -1 if it is not a valid JSON string. */
export function scanString(text: string, pos: number): number {
  if (text.charCodeAt(pos) !== QUOTE) return -1;
  pos++;
  for (;;) {
    PLAIN_CHARS.lastIndex = pos;
    PLAIN_CHARS.test(text);
    pos = PLAIN_CHARS.lastIndex;
    const c = text.charCodeAt(pos);
    if (c === QUOTE) return pos + 1;
    if (c !== 0x5c /* backslash */) return -1; // a control character, or the end of the text
    ESCAPE.lastIndex = pos;
    if (!ESCAPE.test(text)) return -1;
    pos = ESCAPE.lastIndex;
  }
}

/** Index just past the literal or number at `pos`, or -1. */
function scanScalar(text: string, pos: number): number {
  const c = text.charCodeAt(pos);
  if (c === 0x74 /* t */) return text.startsWith("true", pos) ? pos + 4 : -1;
  if (c === 0x66 /* f */) return text.startsWith("false", pos) ? pos + 5 : -1;
  if (c === 0x6e /* n */) return text.startsWith("null", pos) ? pos + 4 : -1;
  // A plain integer (the common case) without a regex call: digits, then a delimiter.
  if (c >= 0x31 && c <= 0x39) {
    let end = pos + 1;
    for (let d = text.charCodeAt(end); d >= 0x30 && d <= 0x39; d = text.charCodeAt(++end));
    const next = text.charCodeAt(end);
    if (next !== 0x2e && next !== 0x65 && next !== 0x45) return end; // not followed by . e E
  }
  NUMBER.lastIndex = pos;
  return NUMBER.test(text) ? NUMBER.lastIndex : -1;
}

/**
 * Index just past the JSON value that starts at `pos` (leading whitespace allowed), or -1 when no
 * valid JSON value starts there. Checks the whole grammar (strings, escapes, numbers, literals,
 * nesting) in one pass, at any depth.
 */
export function scanValue(text: string, pos: number): number {
  // One entry per open container: true for an object (its members are key: value), false for an array.
  const open: boolean[] = [];
  for (;;) {
    // A value starts here.
    pos = skipWhitespace(text, pos);
    const c = text.charCodeAt(pos);
    if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      const isObject = c === OPEN_OBJECT;
      pos = skipWhitespace(text, pos + 1);
      if (text.charCodeAt(pos) !== (isObject ? CLOSE_OBJECT : CLOSE_ARRAY)) {
        open.push(isObject);
        if (isObject && (pos = scanMemberName(text, pos)) < 0) return -1;
        continue;
      }
      pos++;
    } else {
      pos = c === QUOTE ? scanString(text, pos) : scanScalar(text, pos);
      if (pos < 0) return -1;
    }
    // A value ended: close the containers it completes, until one continues with a comma.
    for (;;) {
      if (open.length === 0) return pos;
      pos = skipWhitespace(text, pos);
      const d = text.charCodeAt(pos);
      const inObject = open[open.length - 1]!;
      if (d === COMMA) {
        pos = skipWhitespace(text, pos + 1);
        if (inObject && (pos = scanMemberName(text, pos)) < 0) return -1;
        break;
      }
      if (d !== (inObject ? CLOSE_OBJECT : CLOSE_ARRAY)) return -1;
      open.pop();
      pos++;
    }
  }
}

/** Past `"name" :` at `pos` (whitespace skipped before the colon), or -1. */
function scanMemberName(text: string, pos: number): number {
  pos = scanString(text, pos);
  if (pos < 0) return -1;
  pos = skipWhitespace(text, pos);
  return text.charCodeAt(pos) === COLON ? pos + 1 : -1;
}

/** True when `text` is exactly one JSON value, with optional whitespace around it. */
export function isJson(text: string): boolean {
  const end = scanValue(text, 0);
  return end >= 0 && skipWhitespace(text, end) === text.length;
}

/** The decoded text of the JSON string token `token` (quotes included). */
export function decodeString(token: string): string {
  return token.indexOf("\\") < 0 ? token.slice(1, -1) : (JSON.parse(token) as string);
}

/**
 * The members of the JSON object `text` (already known to be valid JSON), as their raw texts:
 * `{"op":"INSERT","key":{"id" : 5}}` gives `{op: '"INSERT"', key: '{"id" : 5}'}`. With `names`,
 * only those members are kept. Null when `text` is not an object. A repeated member keeps its last
 * value, as JSON.parse does.
 */
export function jsonMembers(text: string, names?: ReadonlySet<string>): Map<string, string> | null {
  let pos = skipWhitespace(text, 0);
  if (text.charCodeAt(pos) !== OPEN_OBJECT) return null;
  const members = new Map<string, string>();
  pos = skipWhitespace(text, pos + 1);
  if (text.charCodeAt(pos) === CLOSE_OBJECT) return members;
  for (;;) {
    const nameEnd = scanString(text, pos);
    if (nameEnd < 0) return null;
    const name = decodeString(text.slice(pos, nameEnd));
    pos = skipWhitespace(text, nameEnd);
    if (text.charCodeAt(pos) !== COLON) return null;
    const start = skipWhitespace(text, pos + 1);
    const end = scanValue(text, start);
    if (end < 0) return null;
    if (!names || names.has(name)) members.set(name, text.slice(start, end));
    pos = skipWhitespace(text, end);
    const c = text.charCodeAt(pos);
    if (c === CLOSE_OBJECT) return members;
    if (c !== COMMA) return null;
    pos = skipWhitespace(text, pos + 1);
  }
}

/**
 * `text` (valid JSON) without whitespace outside strings, every other character kept: the same
 * value always has the same compact text, whoever formatted it (`{"id" : 5}` and `{"id":5}`),
 * while numbers keep their digits (`1.50` stays `1.50`).
 */
export function compactJson(text: string): string {
  let out = "";
  let from = 0;
  for (let pos = 0; pos < text.length; ) {
    const c = text.charCodeAt(pos);
    if (c === QUOTE) {
      pos = scanString(text, pos);
      if (pos < 0) return text; // not valid JSON: leave it as it is
    } else if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) {
      out += text.slice(from, pos);
      pos = skipWhitespace(text, pos);
      from = pos;
    } else {
      pos++;
    }
  }
  return from === 0 ? text : out + text.slice(from);
}

/** How {@link parseJson} returns numbers that a JS number cannot hold exactly. */
export type NumberMode = "number" | "string" | "bigint";

/**
 * Numbers JSON.parse may change: 16 or more digits (an integer past 2^53 has at least 16, a
 * double keeps at most 15-17 significant digits) or a three-digit exponent (past a double's
 * range). Text without any is parsed by JSON.parse exactly. The test may also match inside a
 * string; such text then takes the slower exact path, with the same result.
 */
const MAYBE_INEXACT = /[0-9][0-9.]{15}|[eE][+-]?[0-9]{3}/;

/**
 * Parses JSON like JSON.parse, except for numbers a JS number cannot hold exactly: integers past
 * ±(2^53 - 1) become strings (`"string"`) or bigints (`"bigint"`), and other numbers that a double
 * cannot reproduce digit for digit (a 40-digit numeric, 1e400) become strings. `"number"` is
 * JSON.parse itself. Throws SyntaxError on invalid JSON.
 */
export function parseJson(text: string, numbers: NumberMode = "string"): unknown {
  if (numbers === "number" || !MAYBE_INEXACT.test(text)) return JSON.parse(text);
  const end = scanValue(text, 0);
  if (end < 0 || skipWhitespace(text, end) !== text.length) return JSON.parse(text); // throws JSON.parse's own error
  return build(text, numbers === "bigint");
}

/** A number token as the exact value a caller can use. */
function exactNumber(token: string, bigint: boolean): number | string | bigint {
  const n = Number(token);
  if (/^-?[0-9]+$/.test(token)) return Number.isSafeInteger(n) ? n : bigint ? BigInt(token) : token;
  // Any other number is exact when the double prints back as the same decimal (trailing zeros
  // aside: 1.50 is 1.5), as Postgres's float8 output always does; a longer numeric is not.
  return Number.isFinite(n) && sameDecimal(token, Object.is(n, -0) ? "-0" : String(n)) ? n : token;
}

/** True when two number texts denote the same decimal value (`1.50` and `1.5e0`). */
function sameDecimal(a: string, b: string): boolean {
  const x = decimalParts(a);
  const y = decimalParts(b);
  return x.negative === y.negative && x.digits === y.digits && (x.digits === "" || x.exponent === y.exponent);
}

/** A number text as sign, significant digits (no leading or trailing zeros) and the exponent of its last digit. */
function decimalParts(text: string): { negative: boolean; digits: string; exponent: number } {
  const m = /^(-?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?$/.exec(text)!;
  let digits = (m[2] ?? "") + (m[3] ?? "");
  let exponent = Number(m[4] ?? 0) - (m[3] ?? "").length;
  digits = digits.replace(/^0+/, "");
  const trailing = digits.length - digits.replace(/0+$/, "").length;
  digits = digits.slice(0, digits.length - trailing);
  exponent += trailing;
  return { negative: m[1] === "-", digits, exponent };
}

/** Builds the value of valid JSON `text` (checked by scanValue), iteratively. */
function build(text: string, bigint: boolean): unknown {
  type Frame = { container: unknown[] | Record<string, unknown>; key: string | null };
  const stack: Frame[] = [];
  let pos = 0;
  for (;;) {
    pos = skipWhitespace(text, pos);
    const c = text.charCodeAt(pos);
    let value: unknown;
    if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      const frame: Frame = { container: c === OPEN_OBJECT ? {} : [], key: null };
      pos = skipWhitespace(text, pos + 1);
      if (text.charCodeAt(pos) === (c === OPEN_OBJECT ? CLOSE_OBJECT : CLOSE_ARRAY)) {
        value = frame.container;
        pos++;
      } else {
        if (c === OPEN_OBJECT) pos = readKey(text, pos, frame);
        stack.push(frame);
        continue;
      }
    } else if (c === QUOTE) {
      const end = scanString(text, pos);
      value = decodeString(text.slice(pos, end));
      pos = end;
    } else {
      const end = scanScalar(text, pos);
      const token = text.slice(pos, end);
      value = token === "true" ? true : token === "false" ? false : token === "null" ? null : exactNumber(token, bigint);
      pos = end;
    }
    for (;;) {
      const top = stack[stack.length - 1];
      if (!top) return value;
      if (Array.isArray(top.container)) top.container.push(value);
      else if (top.key === "__proto__") Object.defineProperty(top.container, "__proto__", { value, enumerable: true, writable: true, configurable: true });
      else top.container[top.key!] = value;
      pos = skipWhitespace(text, pos);
      if (text.charCodeAt(pos) === COMMA) {
        pos = skipWhitespace(text, pos + 1);
        if (!Array.isArray(top.container)) pos = readKey(text, pos, top);
        break;
      }
      pos++; // the closing bracket
      stack.pop();
      value = top.container;
    }
  }
}

/** Reads `"name" :` into frame.key; returns the position after the colon. */
function readKey(text: string, pos: number, frame: { key: string | null }): number {
  const end = scanString(text, pos);
  frame.key = decodeString(text.slice(pos, end));
  return text.indexOf(":", end) + 1;
}
