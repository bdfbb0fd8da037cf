/**
 * Reading the outbox in commit order, PgQ-style.
 *
 * Outbox ids are taken before commit, so "id > last id" skips a row whose transaction commits
 * after one with a larger id; ordering by xid breaks per-row order (a transaction that took its
 * xid early can commit its change to a row after a later transaction changed it). PgQ's answer:
 * take snapshots; a window is the rows whose transaction is visible in snapshot `target` but
 * not in snapshot `done`; windows are delivered one after another, each ordered by id. Two
 * transactions that touched the same row are in order either way: the second waited for the
 * first's commit on the row lock, so its outbox row (written after that) has the larger id, and
 * it cannot be visible in an earlier snapshot than the first.
 *
 * A window larger than one batch is shipped in pages (`after_id`); the cursor remembers the page
 * position so a restarted relay resumes inside the window.
 */
import type { Queryable } from "./serial.ts";

/** Where the relay stands: `done` is fully delivered; `target` is the window being shipped. */
export interface Cursor {
  done: string;
  target: string | null;
  afterId: string | null;
}

/** One outbox row as the relay sends it; `data` is the payload's JSON text, unparsed. */
export interface OutboxRow {
  id: string;
  channel: string;
  event: string;
  data: string;
  ts: number;
  /** The channel keeps this event's row as retained state. */
  retain: boolean;
}

/**
 * A share of the outbox: the channels whose hash modulo `count` is `index`. A channel always falls
 * in the same partition, so its events keep their order with one relay per partition.
 */
export interface Partition {
  index: number;
  count: number;
}

/**
 * SQL for the partition of a channel hash (an int4 such as `hashtext(channel)`) among `count`:
 * the hash is widened before abs(), since abs() of the least int4 overflows, and one channel name
 * in four billion hashes to it.
 */
export function partitionSql(hash: string, count: string): string {
  return `mod(abs((${hash})::bigint), ${count})`;
}

/** A page of a window. */
export interface Page {
  /** The window's upper snapshot (taken now if the cursor had none). */
  target: string;
  rows: OutboxRow[];
  /** True when these rows finish the window. */
  complete: boolean;
}

/** A snapshot that sees no transaction: the start of a new cursor, so it delivers the whole outbox. */
export const EMPTY_SNAPSHOT = "1:1:";

/**
 * A snapshot that sees only what every one of `snapshots` sees (text form `xmin:xmax:xip,...`):
 * the smaller xmax, and in progress whatever is in progress in any of them. A cursor starting
 * there re-sends at most what one of them had already shipped, and skips nothing.
 */
export function commonSnapshot(snapshots: string[]): string {
  if (snapshots.length === 0) return EMPTY_SNAPSHOT;
  const parsed = snapshots.map((s) => {
    const [xmin, xmax, xip] = s.split(":");
    return { xmin: BigInt(xmin!), xmax: BigInt(xmax!), xip: xip ? xip.split(",").map(BigInt) : [] };
  });
  const min = (a: bigint, b: bigint) => (a < b ? a : b);
  const xmax = parsed.map((p) => p.xmax).reduce(min);
  const xip = [...new Set(parsed.flatMap((p) => p.xip).filter((x) => x < xmax))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const xmin = min(parsed.map((p) => p.xmin).reduce(min), xip[0] ?? xmax);
  return `${xmin}:${xmax}:${xip.join(",")}`;
}

/**
 * Where a new cursor starts, given the cursors it replaces: the beginning of the outbox when there
 * are none; their exact position when they are all in the same window (one cursor, or partitions
 * that stopped together: the least `afterId`); otherwise the snapshot every one of them had
 * finished, re-sending at most the window one of them was part-way through (the Worker drops ids
 * it already stored).
 */
export function startOf(previous: Cursor[]): Cursor {
  if (previous.length === 0) return { done: EMPTY_SNAPSHOT, target: null, afterId: null };
  const [first] = previous;
  if (previous.every((c) => c.done === first!.done && c.target === first!.target)) {
    const ids = previous.map((c) => c.afterId);
    const afterId = ids.some((id) => id === null)
      ? null
      : ids
          .map((id) => BigInt(id!))
          // biome-ignore lint/complexity/useMathMinMax: bigints, which Math.min does not take
          .reduce((a, b) => (a < b ? a : b))
          .toString();
    return { done: first!.done, target: first!.target, afterId: first!.target === null ? null : afterId };
  }
  return { done: commonSnapshot(previous.map((c) => c.done)), target: null, afterId: null };
}

/**
 * Loads the cursor named `name` (`<relay name>` or, partitioned, `<relay name>:p<i>of<n>`),
 * creating it and, partitioned, its sibling partitions' cursors, so that rows of a partition
 * whose relay has not started yet are never pruned. New cursors of a relay name that already has
 * cursors under another partitioning (`default` becoming `default:p0of2` and `default:p1of2`, or
 * back) start where the furthest-behind of those had delivered: changing the partition count
 * neither skips nor re-sends the outbox. A relay name with no cursor starts at the beginning of
 * the outbox.
 */
export async function loadCursor(db: Queryable, name: string, partition: Partition | null = null): Promise<Cursor> {
  const base = name.split(":")[0]!;
  const generation = partition ? Array.from({ length: partition.count }, (_, i) => `${base}:p${i}of${partition.count}`) : [base];
  const { rows: existing } = await db.query<{ name: string; done: string; target: string | null; after_id: string | null }>(
    "select name, done::text as done, target::text as target, after_id::text as after_id from realtime.cursors where name = $1 or starts_with(name, $1 || ':p')",
    [base],
  );
  if (!generation.every((g) => existing.some((c) => c.name === g))) {
    const previous = existing.filter((c) => !generation.includes(c.name) && (c.name === base || /^[^:]+:p\d+of\d+$/.test(c.name)));
    const start = startOf(previous.map((c) => ({ done: c.done, target: c.target, afterId: c.after_id })));
    await db.query("insert into realtime.cursors (name, done, target, after_id) select unnest($1::text[]), $2, $3, $4 on conflict (name) do nothing", [
      generation,
      start.done,
      start.target,
      start.afterId,
    ]);
  }
  const { rows } = await db.query<{ done: string; target: string | null; after_id: string | null }>(
    "select done::text as done, target::text as target, after_id::text as after_id from realtime.cursors where name = $1",
    [name],
  );
  const row = rows[0]!;
  return { done: row.done, target: row.target, afterId: row.after_id };
}

/** Persists the cursor; called only after the Worker acknowledged what it covers. */
export async function saveCursor(db: Queryable, name: string, cursor: Cursor): Promise<void> {
  await db.query(saveCursorSql("$4"), [cursor.done, cursor.target, cursor.afterId, name]);
}

/** The update behind {@link saveCursor}: the position in $1-$3 (as READ_PAGE_SQL takes them), the name in `nameParam`. */
function saveCursorSql(nameParam: string): string {
  return `update realtime.cursors set done = $1::pg_snapshot, target = $2::pg_snapshot, after_id = $3::bigint, updated_at = now() where name = ${nameParam}::text`;
}

/**
 * The statement behind {@link readPage} (exported so a test can EXPLAIN it): the rows of window
 * (done, target] after `afterId`, in id order, at most `limit`, stopping once their data passes
 * `maxBytes`.
 */
export const READ_PAGE_SQL = `with saved as (
       -- With $8, the read also persists the cursor it reads from (saveCursor's update), for
       -- one round trip instead of two after an acknowledgement. A null $8 matches no row.
       ${saveCursorSql("$8")}
     ), snap as (
       select coalesce($2::pg_snapshot, pg_current_snapshot()) as target, $1::pg_snapshot as done
     )
     select snap.target::text as target, page.*
     from snap left join lateral (
       select sized.id::text as id, channel, event, data, ts::text as ts, retain, fetched::text as fetched
       from (
         select w.*, sum(octet_length(w.data)) over (order by w.id) - octet_length(w.data) as bytes_before,
                count(*) over () as fetched
         from (
           select o.id, o.channel, o.event, o.payload::text as data, o.retain,
                  (extract(epoch from o.created_at) * 1000)::bigint as ts
           from realtime.outbox o
           where ((o.xid >= pg_snapshot_xmax(snap.done) and o.xid < pg_snapshot_xmax(snap.target))
                  or o.xid in (select pg_snapshot_xip(snap.done)))
             and pg_visible_in_snapshot(o.xid, snap.target)
             -- A window's first page starts at the least id of the rows the done snapshot
             -- does not see (found through the xid index: "offset 0" keeps the planner from
             -- turning min() into a pkey scan from the first row), not at the outbox's first
             -- row: the pkey scan then skips the delivered rows kept for retention instead of
             -- filtering every one of them (a cost growing with the retention; docs/benchmarks.md).
             and o.id > coalesce($3::bigint, (select min(x.id) - 1 from (select id from realtime.outbox where xid >= pg_snapshot_xmin(snap.done) offset 0) x), 0)
             and ($6::int is null or ${partitionSql("hashtext(o.channel)", "$6::int")} = $7::int)
           order by o.id
           limit $4
         ) w
       ) sized
       where bytes_before < $5
       -- sized.id, the bigint: ordering by the text column would put 10 before 2.
       order by sized.id
     ) page on true`;

/** {@link READ_PAGE_SQL}'s parameters. */
export function readPageParams(cursor: Cursor, limit: number, maxBytes: number, partition: Partition | null = null, saveAs: string | null = null): unknown[] {
  return [cursor.done, cursor.target, cursor.afterId, limit, maxBytes, partition?.count ?? null, partition?.index ?? null, saveAs];
}

/**
 * The rows of window (done, target] after `afterId`, in id order, at most `limit` of them and
 * stopping once their data passes `maxBytes` (the row that passes it is included, so a page is
 * never empty while the window has rows). With no target, the current snapshot becomes the
 * target in the same statement, so every row it makes visible is visible to this read. With
 * `saveAs`, the same statement also persists `cursor` as that cursor's position (as
 * {@link saveCursor} does).
 */
export async function readPage(
  db: Queryable,
  cursor: Cursor,
  limit: number,
  maxBytes: number,
  partition: Partition | null = null,
  saveAs: string | null = null,
): Promise<Page> {
  const { rows } = await db.query<{
    target: string;
    id: string | null;
    channel: string;
    event: string;
    data: string;
    ts: string;
    retain: boolean;
    fetched: string;
  }>(READ_PAGE_SQL, readPageParams(cursor, limit, maxBytes, partition, saveAs));
  const target = rows[0]!.target;
  const page = rows.filter((r) => r.id !== null);
  const fetched = page.length > 0 ? Number(page[0]!.fetched) : 0;
  return {
    target,
    rows: page.map((r) => ({ id: r.id!, channel: r.channel, event: r.event, data: r.data, ts: Number(r.ts), retain: r.retain })),
    complete: fetched < limit && page.length === fetched,
  };
}

/** The cursor after `page` was acknowledged. */
export function advance(cursor: Cursor, page: Page): Cursor {
  if (page.complete) return { done: page.target, target: null, afterId: null };
  return { done: cursor.done, target: page.target, afterId: page.rows.at(-1)!.id };
}

/**
 * Deletes up to `limit` delivered rows older than `retentionSeconds`. Delivered means visible in
 * the `done` snapshot of every cursor (xid below its xmin): a row of a window still being shipped,
 * or of a transaction still open, is never touched, whatever its age. Each call is one short
 * statement that locks only the rows it deletes, so writers inserting new rows never wait on it.
 */
export async function pruneDelivered(db: Queryable, retentionSeconds: number, limit: number): Promise<number> {
  const { rowCount } = await db.query(
    `with doomed as (
       select id from realtime.outbox
       where xid < (select min(pg_snapshot_xmin(done)) from realtime.cursors)
         and created_at < now() - make_interval(secs => $1)
       order by id
       limit $2
     )
     delete from realtime.outbox o using doomed where o.id = doomed.id`,
    [retentionSeconds, limit],
  );
  return rowCount ?? 0;
}
