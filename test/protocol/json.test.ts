/**
 * protocol/json.ts and protocol/change.ts: JSON read as text. The scanner agrees with JSON.parse
 * on what is JSON, at any depth; members come back as their exact text; parseJson keeps every
 * number a JS number cannot hold; markers copy a change's key digit for digit.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { compactJson, isJson, jsonMembers, markerJson, parseJson, readChange, scanValue, utf8Length } from "../../protocol/index.ts";

const isValid = (text: string) => {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
};

describe("scanValue / isJson", () => {
  it("agrees with JSON.parse on every generated value and every random string", () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.constantFrom(undefined, 1, "\t"), (value, indent) => {
        const text = JSON.stringify(value, null, indent);
        expect(isJson(text)).toBe(true);
        expect(isJson(` ${text}\n`)).toBe(true);
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 30 }), (text) => {
        expect(isJson(text)).toBe(isValid(text));
      }),
      { numRuns: 5000 },
    );
  });

  it("agrees with JSON.parse on near misses", () => {
    for (const text of [
      '{"a":1,}',
      "[1,]",
      "01",
      "1.",
      "-",
      '"\\x"',
      '"\u0001"',
      '{"a" 1}',
      "tru",
      "[1 2]",
      '{"a":1 "b":2}',
      "1 2",
      "",
      " ",
      "{}",
      "[]",
      "[[],{}]",
      '"\\ud800"',
      "-0",
      "1e400",
      "[",
      "]",
    ]) {
      expect(isJson(text), text).toBe(isValid(text));
    }
  });

  it("scans values 100,000 levels deep without a stack (JSON.stringify of the same value throws)", () => {
    const deep = "[".repeat(100_000) + "]".repeat(100_000);
    expect(scanValue(deep, 0)).toBe(deep.length);
    expect(isJson(deep.slice(1))).toBe(false);
  });
});

describe("jsonMembers and compactJson", () => {
  it("returns each member's exact text, whatever the spacing", () => {
    const members = jsonMembers('{ "op" : "INSERT", "key":{"id" : 9007199254740993}, "new": [1,{"x":1.50}] , "a\\"b": null }')!;
    expect([...members]).toEqual([
      ["op", '"INSERT"'],
      ["key", '{"id" : 9007199254740993}'],
      ["new", '[1,{"x":1.50}]'],
      ['a"b', "null"],
    ]);
    expect(jsonMembers("[1]")).toBeNull();
  });

  it("removes whitespace outside strings only", () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        expect(compactJson(JSON.stringify(value, null, 2))).toBe(JSON.stringify(value));
      }),
    );
    expect(compactJson('{"id" : 1.50, "s": " a b "}')).toBe('{"id":1.50,"s":" a b "}');
  });
});

describe("parseJson", () => {
  it("gives numbers a JS number cannot hold as their digits (or bigint), and every other value as JSON.parse does", () => {
    const text =
      '{"big":9007199254740993,"neg":-9223372036854775808,"num":12345678901234567890.12345678901234567890,"huge":1e400,"tiny":1e-400,"ok":1.5,"safe":9007199254740991,"z":-0,"s":"9007199254740993"}';
    expect(parseJson(text)).toEqual({
      big: "9007199254740993",
      neg: "-9223372036854775808",
      num: "12345678901234567890.12345678901234567890",
      huge: "1e400",
      tiny: "1e-400",
      ok: 1.5,
      safe: 9007199254740991,
      z: -0,
      s: "9007199254740993",
    });
    expect(parseJson(text, "bigint")).toMatchObject({
      big: 9007199254740993n,
      neg: -9223372036854775808n,
      num: "12345678901234567890.12345678901234567890",
      ok: 1.5,
    });
    expect(parseJson(text, "number")).toEqual(JSON.parse(text));
  });

  it("equals JSON.parse on any value whose integers are safe (every double JSON.stringify prints is exact)", () => {
    const safe = (_: string, v: unknown) => (typeof v === "number" && Number.isInteger(v) && !Number.isSafeInteger(v) ? 0 : v);
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (value) => {
        const text = JSON.stringify(value, safe);
        expect(parseJson(text)).toEqual(JSON.parse(text));
      }),
      { numRuns: 2000 },
    );
  });

  it("never changes an integer: any int64 comes back equal to its text", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), (n) => {
        const value = (parseJson(`{"v":${n}}`) as { v: number | string }).v;
        expect(String(value)).toBe(String(n));
        expect((parseJson(`[${n}]`, "bigint") as [number | bigint])[0].toString()).toBe(n.toString());
      }),
    );
  });

  it("throws SyntaxError on invalid JSON, deep or not", () => {
    expect(() => parseJson('{"a":12345678901234567890,}')).toThrow(SyntaxError);
    expect(() => parseJson("nope")).toThrow(SyntaxError);
  });
});

describe("change events read as text", () => {
  const data =
    '{"op" : "UPDATE", "schema" : "public", "table" : "t", "key" : {"id" : 9007199254740993}, "new" : {"id":9007199254740993,"v":"é"}, "old" : {"id":9007199254740993}}';

  it("reads op, table and the key's compact text without parsing the row", () => {
    expect(readChange(data)).toEqual({
      op: "UPDATE",
      schema: "public",
      table: "t",
      key: '{"id":9007199254740993}',
      new: '{"id":9007199254740993,"v":"é"}',
      marker: false,
      unchanged: null,
    });
    expect(readChange(data.replace("}}", '}, "unchanged" : ["body"]}'))?.unchanged).toEqual(["body"]);
    expect(readChange('{"op":"NOPE","schema":"s","table":"t"}')).toBeNull();
    expect(readChange("[1,2]")).toBeNull();
  });

  it("builds a marker that keeps the key's digits and counts UTF-8 bytes", () => {
    expect(markerJson(data, "event_too_large")).toBe(
      `{"oversized":true,"reason":"event_too_large","bytes":${utf8Length(data)},"op":"UPDATE","schema":"public","table":"t","key":{"id":9007199254740993}}`,
    );
    expect(utf8Length(data)).toBe(new TextEncoder().encode(data).byteLength);
    expect(markerJson('"just text"', "unstorable", 7)).toBe('{"unstorable":true,"reason":"unstorable","bytes":7}');
  });

  it("counts UTF-8 bytes as TextEncoder does, surrogate pairs and lone surrogates included", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), (s) => {
        expect(utf8Length(s)).toBe(new TextEncoder().encode(s).byteLength);
      }),
    );
    expect(utf8Length("\ud800x")).toBe(new TextEncoder().encode("\ud800x").byteLength);
  });
});
