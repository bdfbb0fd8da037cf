/**
 * Exactly what the producer wrote, and nothing can stop the stream, inside workerd: event data is
 * carried as its JSON text through ingest, the log, live frames, replay, snapshots and shards (a
 * bigint past 2^53, a 40-digit numeric, 1e400, -0, text across Unicode planes, values 10,000 deep
 * and 10,000 wide); retained keys compare by their exact text; one event's content never fails
 * its batch or the batches after it.
 */

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { IngestEvent, SnapshotRow } from "../../protocol/index.ts";
import { ingestBody, jsonMembers, scanValue } from "../../protocol/index.ts";
import { event, ingest, postIngest, Socket } from "./helpers.ts";

/** 40 generated runs take 2-3 s on an idle 2-core machine; a loaded one needs more. */
const PROPERTY_TIMEOUT_MS = 30_000;

const stubOf = (channel: string) => env.CHANNEL.get(env.CHANNEL.idFromName(channel));

/** The elements of a JSON array's text, as texts. */
function elements(array: string): string[] {
  const out: string[] = [];
  let pos = array.indexOf("[") + 1;
  for (;;) {
    while (" \n\r\t,".includes(array[pos]!)) pos++;
    if (array[pos] === "]") return out;
    const end = scanValue(array, pos);
    out.push(array.slice(pos, end));
    pos = end;
  }
}

/** The data texts of every event a socket received, in order, read from the raw frames. */
function dataTexts(sock: Socket): string[] {
  return sock.raw
    .filter((t) => t.startsWith('{"type":"events"'))
    .flatMap((frame) => elements(jsonMembers(frame)!.get("events")!).map((e) => jsonMembers(e)!.get("data")!));
}

/** The rows of the last snapshot a socket received, as texts: {key, row}. */
function snapshotTexts(sock: Socket): { key: string; row: string }[] {
  const frame = sock.raw.filter((t) => t.startsWith('{"type":"snapshot"')).at(-1)!;
  return elements(jsonMembers(frame)!.get("rows")!).map((r) => {
    const m = jsonMembers(r)!;
    return { key: m.get("key")!, row: m.get("row")! };
  });
}

/** A JSON number as Postgres may print it: integers past 2^53, long numerics, exponents, -0. */
const number = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map(String),
  fc.tuple(fc.bigInt({ min: 0n, max: 10n ** 20n }), fc.stringMatching(/^[0-9]{1,20}$/)).map(([i, f]) => `${i}.${f}`),
  fc.constantFrom("1e400", "-1e-400", "-0", "0.0", "1.50", "12345678901234567890.12345678901234567890", "9007199254740993", "-9223372036854775808"),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
);
/** Text across Unicode planes, with the characters JSON must or may escape. */
const text = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }).map((s) => JSON.stringify(s)),
  fc.constantFrom('"\u2028\u2029"', '"\\u0000 \\" \\\\ \\/ \\n"', '"😀 𝄞 漢字 é"', '"\\ud83d\\ude00"'),
);
/** JSON text as Postgres's json and jsonb print it (`"a" : 1` and `"a": 1` both occur). */
const jsonText: fc.Arbitrary<string> = fc.letrec<{ value: string }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    number,
    text,
    fc.constantFrom("true", "false", "null"),
    fc.array(tie("value"), { maxLength: 4 }).map((xs) => `[${xs.join(", ")}]`),
    fc
      .array(fc.tuple(fc.stringMatching(/^[a-z_]{1,8}$/), tie("value")), { maxLength: 4 })
      .chain((kvs) => fc.constantFrom(":", " : ", ": ").map((sep) => `{${kvs.map(([k, v]) => `"${k}"${sep}${v}`).join(", ")}}`)),
  ),
})).value;

const DEEP = 10_000;
const deep = `${'{"a":['.repeat(DEEP)}1${"]}".repeat(DEEP)}`;
const wide = `{${Array.from({ length: 10_000 }, (_, i) => `"k${i}": ${i % 2 ? "9007199254740993" : `"v${i}"`}`).join(", ")}}`;

/** An ingest event whose data is `data`, the exact text. */
function raw(channel: string, data: string, over: Partial<IngestEvent> = {}): IngestEvent {
  return { ...event(channel), data, ...over };
}

describe("values are carried as the text they were written", () => {
  it(
    "delivers any JSON text byte for byte: live, replayed after a reconnect, and replayed after eviction",
    async () => {
      let run = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(jsonText, { minLength: 1, maxLength: 8 }), async (datas) => {
          const channel = `fid-${++run}`;
          const live = await Socket.open(channel);
          const [welcome] = await live.frameCount(1);
          const events = datas.map((d) => raw(channel, d));
          expect((await ingest(events)).status).toBe(200);
          await live.eventCount(datas.length);
          expect(dataTexts(live)).toEqual(datas);
          const since = `?since=0&epoch=${(welcome as { epoch: string }).epoch}`;
          const replayed = await Socket.open(channel, since);
          await replayed.eventCount(datas.length);
          expect(dataTexts(replayed)).toEqual(datas);
          await evictDurableObject(stubOf(channel));
          const afterWake = await Socket.open(channel, since);
          await afterWake.eventCount(datas.length);
          expect(dataTexts(afterWake)).toEqual(datas);
          for (const s of [live, replayed, afterWake]) s.ws.close();
        }),
        { numRuns: 40 },
      );
    },
    PROPERTY_TIMEOUT_MS,
  );

  it("keeps a value 10,000 levels deep and one 10,000 keys wide, in a batch with others, through a filter and a shard", async () => {
    const filtered = await Socket.open("deep", `?filter=${encodeURIComponent('{"k1":{"eq":9007199254740993}}')}`);
    const plain = await Socket.open("deep");
    const sharded = await Socket.open("live:deep");
    const res = await ingest([raw("deep", "1"), raw("deep", deep), raw("deep", wide), raw("deep", "2"), raw("live:deep", deep), raw("live:deep", wide)]);
    expect(res).toEqual({ status: 200, body: { accepted: 6, duplicates: 0 } });
    await plain.eventCount(4);
    expect(dataTexts(plain)).toEqual(["1", deep, wide, "2"]);
    // The filter reads the wide row's k1 as the exact integer: it matches, and nothing else does.
    await filtered.eventCount(1);
    expect(dataTexts(filtered)).toEqual([wide]);
    await sharded.eventCount(2);
    expect(dataTexts(sharded)).toEqual([deep, wide]);
    // And the channel goes on.
    await ingest([raw("deep", "3")]);
    await plain.eventCount(5);
    expect(dataTexts(plain).at(-1)).toBe("3");
  });

  it("tells integers one apart past 2^53 in retained keys: two rows stay two, and deleting one keeps the other", async () => {
    const row = (id: string, v: string) =>
      `{"op" : "INSERT", "schema" : "public", "table" : "big", "key" : {"id" : ${id}}, "new" : {"id":${id},"v":${v}}, "old" : null}`;
    const del = (id: string) => `{"op" : "DELETE", "schema" : "public", "table" : "big", "key" : {"id" : ${id}}, "new" : null, "old" : {"id":${id}}}`;
    await ingest([
      raw("bigkeys", row("9007199254740992", "12345678901234567890.12345678901234567890"), { event: "insert", retain: true }),
      raw("bigkeys", row("9007199254740993", "1e400"), { event: "insert", retain: true }),
    ]);
    const before = await Socket.open("bigkeys");
    await before.frameCount(2);
    expect(snapshotTexts(before)).toEqual([
      { key: '{"id":9007199254740992}', row: '{"id":9007199254740992,"v":12345678901234567890.12345678901234567890}' },
      { key: '{"id":9007199254740993}', row: '{"id":9007199254740993,"v":1e400}' },
    ]);
    await ingest([raw("bigkeys", del("9007199254740992"), { event: "delete", retain: true })]);
    const after = await Socket.open("bigkeys");
    await after.frameCount(2);
    expect(snapshotTexts(after)).toEqual([{ key: '{"id":9007199254740993}', row: '{"id":9007199254740993,"v":1e400}' }]);
  });

  it("answers an ingest body that is not valid JSON inside an event's data with 400, naming the event, and stores nothing", async () => {
    const body = ingestBody([raw("bad-data", "1"), raw("bad-data", "[1,]")]);
    const res = await postIngest(body);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("malformed_json");
    const sock = await Socket.open("bad-data");
    const [welcome] = await sock.frameCount(1);
    expect(welcome).toMatchObject({ seq: 0 });
  });
});

describe("no event can stop the others", () => {
  it("retains a row larger than STATE_MAX_ROW_BYTES as its key flagged oversized, the same for live and joining clients", async () => {
    const big = "x".repeat(1024 * 1024 + 10);
    const ins = (id: number, title: string) =>
      `{"op":"INSERT","schema":"public","table":"docs","key":{"id":${id}},"new":{"id":${id},"title":"${title}"},"old":null}`;
    const live = await Socket.open("big-rows", "?snapshot=1");
    await live.frameCount(2); // welcome and the empty snapshot it asked for
    expect(snapshotTexts(live)).toEqual([]);
    const res = await ingest([
      raw("big-rows", ins(1, "small"), { event: "insert", retain: true }),
      raw("big-rows", ins(2, big), { event: "insert", retain: true }),
    ]);
    expect(res.body).toEqual({ accepted: 2, duplicates: 0, markers: 1 });
    const events = await live.eventCount(2);
    expect(events[1]!.data).toEqual({
      oversized: true,
      reason: "row_too_large",
      bytes: ins(2, big).length,
      op: "INSERT",
      schema: "public",
      table: "docs",
      key: { id: 2 },
    });
    const joining = await Socket.open("big-rows");
    const [, snapshot] = await joining.frameCount(2);
    expect((snapshot as { rows: SnapshotRow[] }).rows).toEqual([
      { schema: "public", table: "docs", key: { id: 1 }, row: { id: 1, title: "small" }, seq: 1 },
      { schema: "public", table: "docs", key: { id: 2 }, row: null, seq: 2, oversized: true },
    ]);
    // A later version small enough is retained again.
    await ingest([raw("big-rows", ins(2, "smaller now").replace("INSERT", "UPDATE"), { event: "update", retain: true })]);
    const later = await Socket.open("big-rows");
    const [, snap2] = await later.frameCount(2);
    expect((snap2 as { rows: SnapshotRow[] }).rows[1]).toEqual({
      schema: "public",
      table: "docs",
      key: { id: 2 },
      row: { id: 2, title: "smaller now" },
      seq: 3,
    });
  });

  it("stores an event its channel's storage refuses as an unstorable marker, and every other event of the batch as sent", async () => {
    // The channel's own SQLite refuses this event's data, as Durable Object SQLite refuses a value
    // past its limits in production (a trigger in the real database, not a stand-in for our code).
    const sock = await Socket.open("poison");
    await runInDurableObject(stubOf("poison"), (_, state) => {
      state.storage.sql.exec(
        `create trigger refuse before insert on log when new.data like '%refuse_me%' begin select raise(abort, 'refused by storage'); end`,
      );
    });
    const poison = `{"op":"INSERT","schema":"public","table":"t","key":{"id":9007199254740993},"new":{"id":9007199254740993,"note":"refuse_me"},"old":null}`;
    const res = await ingest([raw("poison", "1"), raw("poison", poison, { event: "insert", retain: true }), raw("poison", "3")]);
    expect(res).toEqual({ status: 200, body: { accepted: 3, duplicates: 0, markers: 1 } });
    await sock.eventCount(3);
    expect(dataTexts(sock)).toEqual([
      "1",
      `{"unstorable":true,"reason":"unstorable","bytes":${poison.length},"op":"INSERT","schema":"public","table":"t","key":{"id":9007199254740993}}`,
      "3",
    ]);
    // The channel keeps working, and its counters say what happened.
    await ingest([raw("poison", "4")]);
    expect((await sock.eventCount(4)).at(-1)!.data).toBe(4);
    const unstorable = await runInDurableObject(
      stubOf("poison"),
      (_, state) => state.storage.sql.exec<{ value: string }>("select value from meta where key = 'unstorable'").one().value,
    );
    expect(unstorable).toBe("1");
  });

  it("fills an update's unchanged columns from the retained row, from an earlier batch or the same one; names them when it keeps none", async () => {
    const ins = (id: number) =>
      `{"op" : "INSERT", "schema" : "public", "table" : "t", "key" : {"id" : ${id}}, "new" : {"id":${id},"title":"a","body":"${"b".repeat(50)}","n":9007199254740993}, "old" : null}`;
    const upd = (id: number) =>
      `{"op" : "UPDATE", "schema" : "public", "table" : "t", "key" : {"id" : ${id}}, "new" : {"id":${id},"title":"z","n":9007199254740993}, "old" : null, "unchanged" : ["body"]}`;
    const filled = (id: number) =>
      `{"op" : "UPDATE", "schema" : "public", "table" : "t", "key" : {"id" : ${id}}, "new" : {"id":${id},"title":"z","body":"${"b".repeat(50)}","n":9007199254740993}, "old" : null}`;
    const sock = await Socket.open("toast");
    await ingest([raw("toast", ins(1), { event: "insert", retain: true })]);
    await ingest([
      raw("toast", upd(1), { event: "update", retain: true }),
      raw("toast", ins(2), { event: "insert", retain: true }),
      raw("toast", upd(2), { event: "update", retain: true }),
    ]);
    // Not retained: nothing to fill from, the event names the column.
    await ingest([raw("toast", upd(3), { event: "update" })]);
    await sock.eventCount(5);
    expect(dataTexts(sock)).toEqual([ins(1), filled(1), ins(2), filled(2), upd(3)]);
    const joining = await Socket.open("toast");
    await joining.frameCount(2);
    expect(snapshotTexts(joining).map((r) => r.row)).toEqual([1, 2].map((id) => `{"id":${id},"title":"z","body":"${"b".repeat(50)}","n":9007199254740993}`));
  });

  it("sends an empty snapshot to a socket that asks for one on a channel that holds no rows yet", async () => {
    const sock = await Socket.open("empty-retained", "?snapshot=1");
    const frames = await sock.frameCount(2);
    expect(frames[1]).toEqual({ type: "snapshot", seq: 0, rows: [] });
    const sharded = await Socket.open("live:empty-retained", "?snapshot=1");
    const shardFrames = await sharded.frameCount(2);
    expect(shardFrames[1]).toEqual({ type: "snapshot", seq: 0, rows: [] });
  });

  it("starts a new epoch on a reset notice (events lost at the source): sockets reconnect, are told lost, and the retained rows start over", async () => {
    const row = (id: number) => `{"op":"INSERT","schema":"public","table":"t","key":{"id":${id}},"new":{"id":${id}},"old":null}`;
    await ingest([raw("lost-ch", row(1), { event: "insert", retain: true }), raw("lost-ch", row(2), { event: "insert", retain: true })]);
    const before = await Socket.open("lost-ch");
    const [welcome] = await before.frameCount(2);
    const epoch = (welcome as { epoch: string }).epoch;
    const notice = raw("lost-ch", '{"reason":"slot_lost"}', { event: "reset", reset: true });
    expect((await ingest([notice])).body).toEqual({ accepted: 1, duplicates: 0 });
    await before.until(() => before.closed);
    expect(before.closed!.code).toBe(1012);
    // The same notice again (a re-sent batch) changes nothing.
    expect((await ingest([notice])).body).toEqual({ accepted: 0, duplicates: 1 });
    const back = await Socket.open("lost-ch", `?since=2&epoch=${epoch}`);
    const frames = await back.frameCount(3);
    expect(frames.map((f) => f.type)).toEqual(["welcome", "reset", "snapshot"]);
    expect(frames[1]).toMatchObject({ reason: "lost", epoch: (frames[0] as { epoch: string }).epoch });
    expect((frames[0] as { epoch: string }).epoch).not.toBe(epoch);
    expect((frames[2] as { rows: unknown[] }).rows).toEqual([]);
    // The rows captured again are retained in the new epoch, and the channel goes on.
    await ingest([raw("lost-ch", row(1), { event: "insert", retain: true })]);
    await back.eventCount(1);
    const fresh = await Socket.open("lost-ch");
    const [, snapshot] = await fresh.frameCount(2);
    expect((snapshot as { rows: SnapshotRow[] }).rows.map((r) => r.key)).toEqual([{ id: 1 }]);
  });
});
