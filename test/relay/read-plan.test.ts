/**
 * The relay's read stays proportional to the window, not to the outbox: delivered rows are kept
 * for `--retention` (an hour by default), and a read that walked past every one of them to find
 * the window cost 30 ms at 200,000 kept rows, per batch. Checked from Postgres's own plan
 * (EXPLAIN ANALYZE), not from a clock. And its partition filter holds for every channel hash.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Cursor, EMPTY_SNAPSHOT, partitionSql, READ_PAGE_SQL, readPage, readPageParams } from "../../relay/outbox.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";

let db: TestDatabase;

beforeAll(async () => {
  db = await testDatabase("read_plan");
  await db.sql("create table kept (id bigint generated always as identity primary key, channel text not null)");
  await db.sql("select realtime.watch('kept', '{channel}')");
});

afterAll(async () => {
  await db?.drop();
});

/** Rows the plan's nodes read and threw away, summed over the whole plan. */
function rowsRemoved(plan: Record<string, unknown>): number {
  const own = Number(plan["Rows Removed by Filter"] ?? 0) + Number(plan["Rows Removed by Index Recheck"] ?? 0);
  const children = (plan.Plans as Record<string, unknown>[] | undefined) ?? [];
  return own + children.reduce((sum, p) => sum + rowsRemoved(p), 0);
}

it("reads a new window through the index, past 20,000 delivered rows without touching them", async () => {
  // 20,000 delivered rows (the cursor's done snapshot sees them), then 3 new ones.
  for (let i = 0; i < 20; i++) await db.sql("insert into kept (channel) select 'c' || (g % 7) from generate_series(1, 1000) g");
  const [snapshot] = await db.sql<{ done: string }>("select pg_current_snapshot()::text as done");
  await db.sql("insert into kept (channel) values ('c1'), ('c2'), ('c3')");
  await db.sql("analyze realtime.outbox");
  const cursor: Cursor = { done: snapshot!.done, target: null, afterId: null };

  const page = await readPage(await db.client(), cursor, 1000, 1 << 20);
  expect(page.rows.map((r) => r.channel)).toEqual(["c1", "c2", "c3"]);
  expect(page.complete).toBe(true);

  const [explained] = await db.sql<{ "QUERY PLAN": [{ Plan: Record<string, unknown> }] }>(
    `explain (analyze, format json) ${READ_PAGE_SQL}`,
    readPageParams(cursor, 1000, 1 << 20),
  );
  expect(rowsRemoved(explained!["QUERY PLAN"][0].Plan)).toBeLessThan(100);

  // From the very start of the outbox, every row is the window's: nothing read is thrown away either.
  const all = await readPage(await db.client(), { done: EMPTY_SNAPSHOT, target: null, afterId: null }, 1000, 1 << 20);
  expect(all.rows).toHaveLength(1000);
  expect(all.complete).toBe(false);
});

it("places a channel whose hash is the least int4 in a partition, where abs() of it would overflow", async () => {
  const [row] = await db.sql<{ p: string }>(`select ${partitionSql("(-2147483648)::int", "4")} as p`);
  expect(Number(row!.p)).toBe(0);
  await expect(db.sql("select mod(abs((-2147483648)::int), 4)")).rejects.toThrow(/integer out of range/);
});
