/**
 * A channel's event log in its SQLite: every stored event by seq (the replay log that resuming
 * clients and shards read), the ids seen (dedupe of the relay's at-least-once delivery), and the
 * trimming that bounds both. Event data is stored as the exact JSON text it arrived as, split into
 * chunks when it is larger than SQLite takes in one value.
 */
import { eventJson, SIGNATURE_TOLERANCE_SECONDS } from "../protocol/index.ts";
import type { Outgoing } from "./hub.ts";

/** Ids remembered for dedupe beyond the replay log: covers a relay re-sending its last batches. */
export const DEDUPE_MIN_IDS = 10_000;

/**
 * And ids are remembered at least this long: twice the signature tolerance, so a captured ingest
 * request replayed while its signature is still accepted finds every one of its ids here.
 */
export const DEDUPE_MIN_AGE_MS = 2 * SIGNATURE_TOLERANCE_SECONDS * 1000;

/** Events appended between two trims (see {@link EventLog.maybeTrim}), or this long at most. */
const TRIM_EVERY = 100;
const TRIM_MAX_INTERVAL_MS = 60_000;

/**
 * Event data is stored in pieces of at most this many UTF-16 units (at most 1.5 MB of UTF-8):
 * Durable Object SQLite refuses strings and rows over 2 MB, and an event may be larger.
 */
export const LOG_CHUNK_UNITS = 500_000;

const SCHEMA = `
  create table if not exists log (
    seq integer primary key,
    id text not null,
    event text not null,
    data text not null,
    parts integer not null default 0,
    ts integer not null,
    stored_at integer not null
  );
  create table if not exists log_part (seq integer not null, part integer not null, chunk text not null, primary key (seq, part));
  create table if not exists seen (id text primary key, seq integer not null, at integer not null default 0);
  create index if not exists seen_by_seq on seen (seq);
`;

/** An event as the log stores it: data is its JSON text. */
export interface LoggedEvent {
  seq: number;
  id: string;
  event: string;
  data: string;
  ts: number;
}

/** How long the log keeps an event: while it is among the last `maxEvents` and younger than `maxAgeMs` (REPLAY_MAX_EVENTS, REPLAY_MAX_AGE_SECONDS). */
export interface LogBounds {
  maxEvents: number;
  maxAgeMs: number;
}

export class EventLog {
  /** Seq and time of the last trim (in memory: after a wake-up the first append trims). */
  private trimmedAt = 0;
  private trimmedTime = 0;

  constructor(
    private readonly sql: SqlStorage,
    private readonly bounds: LogBounds,
  ) {
    sql.exec(SCHEMA);
    // Objects created before seen.at existed get the column (every id counts as old).
    if (
      !sql
        .exec<{ name: string }>("pragma table_info(seen)")
        .toArray()
        .some((c) => c.name === "at")
    ) {
      sql.exec("alter table seen add column at integer not null default 0");
    }
  }

  /** The ids among `ids` already seen (stored, or remembered past the log). */
  known(ids: readonly string[]): Set<string> {
    // One statement whatever the count: the ids travel as one JSON parameter (DO SQLite allows 100
    // bound parameters per statement).
    return new Set(
      this.sql
        .exec<{ id: string }>("select value as id from json_each(?) where value in (select id from seen)", JSON.stringify(ids))
        .toArray()
        .map((r) => r.id),
    );
  }

  /** Remembers an id that stores no event (a reset notice), so a re-sent one is dropped. */
  remember(id: string, seq: number, now: number): void {
    this.sql.exec("insert into seen (id, seq, at) values (?, ?, ?)", id, seq, now);
  }

  /**
   * Stores `events` (new ids, ascending seqs) and remembers their ids. A constant number of
   * statements whatever the batch's size, each sql.exec being a call into the runtime: the rows
   * travel as one JSON parameter, event data as a JSON string in it, so SQLite stores its exact text.
   */
  append(events: readonly LoggedEvent[], now: number): void {
    if (events.length === 0) return;
    const rows: { s: number; i: string; e: string; d: string; p: number; t: number }[] = [];
    const parts: [seq: number, part: number, chunk: string][] = [];
    for (const e of events) {
      const [head, ...rest] = chunks(e.data);
      rows.push({ s: e.seq, i: e.id, e: e.event, d: head ?? "", p: rest.length, t: e.ts });
      rest.forEach((chunk, i) => {
        parts.push([e.seq, i + 1, chunk]);
      });
    }
    const json = JSON.stringify(rows);
    this.sql.exec("insert into seen (id, seq, at) select value ->> '$.i', value ->> '$.s', ? from json_each(?)", now, json);
    this.sql.exec(
      `insert into log (seq, id, event, data, parts, ts, stored_at)
       select value ->> '$.s', value ->> '$.i', value ->> '$.e', value ->> '$.d', value ->> '$.p', value ->> '$.t', ? from json_each(?)`,
      now,
      json,
    );
    for (const [seq, part, chunk] of parts) this.sql.exec("insert into log_part (seq, part, chunk) values (?, ?, ?)", seq, part, chunk);
  }

  /** Events after `seq` (at most `limit`), in order, each with its frame JSON and its data as the text it was stored as. */
  from(seq: number, limit = -1): Outgoing[] {
    return this.sql
      .exec<{ seq: number; id: string; event: string; data: string; parts: number; ts: number }>(
        "select seq, id, event, data, parts, ts from log where seq > ? order by seq limit ?",
        seq,
        limit,
      )
      .toArray()
      .map((row) => {
        const data =
          row.parts === 0
            ? row.data
            : row.data +
              this.sql
                .exec<{ chunk: string }>("select chunk from log_part where seq = ? order by part", row.seq)
                .toArray()
                .map((r) => r.chunk)
                .join("");
        return { seq: row.seq, json: eventJson(row.seq, row.id, row.event, data, row.ts), data };
      });
  }

  /** True when the log still holds every event after `seq` (none was trimmed). */
  covers(seq: number): boolean {
    const oldest = this.oldest();
    return oldest !== null && seq >= oldest - 1;
  }

  /** The oldest seq the log holds, or null when empty. */
  oldest(): number | null {
    return this.sql.exec<{ seq: number | null }>("select min(seq) as seq from log").one().seq;
  }

  /** Events held and the oldest seq, for stats. */
  size(): { events: number; oldest: number | null } {
    const r = this.sql.exec<{ n: number; oldest: number | null }>("select count(*) as n, min(seq) as oldest from log").one();
    return { events: r.n, oldest: r.oldest };
  }

  /** Empties the log (a new epoch); the ids seen stay, so re-sent batches are still dropped. */
  clear(): void {
    this.sql.exec("delete from log");
    this.sql.exec("delete from log_part");
  }

  /**
   * Trims after an append when TRIM_EVERY events went in since the last trim or the oldest entry
   * may have aged out: trimming costs three statements, and this keeps the bounds within a few
   * percent for a fraction of the cost.
   */
  maybeTrim(seq: number, now: number, keepAfter: number): void {
    if (seq - this.trimmedAt >= TRIM_EVERY || now - this.trimmedTime >= TRIM_MAX_INTERVAL_MS) this.trim(seq, now, keepAfter);
  }

  /**
   * Drops entries past the count or age bound (never one after `keepAfter`: a conflation window
   * has yet to send it), and dedupe ids past both of theirs. `seq` is the channel's latest.
   */
  trim(seq: number, now: number, keepAfter: number): void {
    this.trimmedAt = seq;
    this.trimmedTime = now;
    const { maxEvents, maxAgeMs } = this.bounds;
    // Rows are stored in seq order at the time of their publish, so the rows past an age bound
    // are a prefix of the log: each age bound below is "before the first row young enough",
    // found by walking seq upwards to that row. Every statement then touches only the rows it
    // deletes (plus one). Written as one condition on both columns ("seq <= ? or stored_at < ?"),
    // SQLite scanned the whole table on every trim: the whole log, and every id `seen` holds for
    // its minimum age. Should the clock step back, rows after the step wait for a later trim.
    this.sql.exec(
      `delete from log where seq <= min(max(?1, coalesce((select seq from log where stored_at >= ?2 order by seq limit 1), ?3 + 1) - 1), ?3)`,
      seq - maxEvents,
      now - maxAgeMs,
      keepAfter,
    );
    this.sql.exec("delete from log_part where seq < coalesce((select min(seq) from log), ?)", seq + 1);
    // Ids are kept while either bound holds them: among the last DEDUPE_MIN_IDS (or the log's
    // size), or younger than DEDUPE_MIN_AGE_MS.
    this.sql.exec(
      `delete from seen where seq <= min(?1, coalesce((select seq from seen where at >= ?2 order by seq limit 1), ?1 + 1) - 1)`,
      seq - Math.max(maxEvents, DEDUPE_MIN_IDS),
      now - DEDUPE_MIN_AGE_MS,
    );
  }
}

/** Splits `text` into pieces of at most `units` UTF-16 units, never between the halves of a surrogate pair. */
export function chunks(text: string, units = LOG_CHUNK_UNITS): string[] {
  const out: string[] = [];
  for (let start = 0; start < text.length; ) {
    let end = Math.min(start + units, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && end > start + 1 && last >= 0xd800 && last <= 0xdbff) end--;
    out.push(text.slice(start, end));
    start = end;
  }
  return out;
}
