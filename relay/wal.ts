/**
 * The `wal` source: the capture functions' events as transactional logical decoding messages
 * (sql/realtime.sql, `realtime.sink_sql`), read over the streaming replication protocol with the
 * built-in `pgoutput` plugin.
 *
 * Why: in `outbox` capture every captured row is a second row for the writer (heap, two indexes,
 * their WAL, a later delete). A message is one WAL record and nothing else, and decoding hands
 * transactions over in commit order, so the relay needs no snapshots, no cursor table and no
 * doorbell, and writers pay less for capture than with the outbox (docs/benchmarks.md has the
 * figures).
 *
 * Delivery: the replication slot's confirmed position is the cursor. It moves (a standby status
 * update) only to the end of a transaction whose every event the Worker acknowledged, so a relay
 * that dies re-reads from there; the channels drop the ids they already stored. Event ids are the
 * message's WAL position, unique and the same on every re-read.
 */
import pg from "pg";
import type { RowChange } from "./changes.ts";
import { textOutputOptions } from "./pgjson.ts";
import { decodePgOutput, PG_EPOCH_MS, type Relation, type TupleValue } from "./pgoutput.ts";
import type { Queryable } from "./serial.ts";

/** Bytes of a tuple's values (for the buffer's bound). */
function tupleBytes(values: TupleValue[]): number {
  let n = 0;
  for (const v of values) if (typeof v === "string") n += v.length;
  return n;
}

/** Prefix of the capture's messages; other messages in the WAL are skipped. */
export const WAL_PREFIX = "realtime";
/**
 * The publication the relay decodes through. Under capture `wal` it has no tables (the triggers'
 * messages are decoded whatever the publication holds); under capture `publication`, watch()
 * adds each watched table to it and pgoutput sends their row changes.
 */
export const WAL_PUBLICATION = "realtime";

/**
 * The replication slot of a relay: `realtime_<install id>_<cursor name>`, lowercased as Postgres
 * requires. Slot names are per cluster, so the installation id keeps two databases apart.
 */
export function slotName(installId: string, cursorName: string): string {
  return `realtime_${installId}_${cursorName}`
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, "_")
    .slice(0, 63);
}

/** `16/B374D848` → 0x16B374D848. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (!m) throw new Error(`not an LSN: ${JSON.stringify(text)}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** 0x16B374D848 → `16/B374D848`. */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** One captured event, decoded from its message. */
export interface WalEvent {
  /** The message's WAL position: the event's id. */
  lsn: bigint;
  channel: string;
  event: string;
  /** The payload's JSON text, unparsed. */
  data: string;
  retain: boolean;
  /** Commit time of its transaction, Unix ms. */
  ts: number;
}

/**
 * A change of a table in the relay's publication (capture `publication`: no trigger), with where
 * it is in the WAL: `lsn` is the position its XLogData started at, `ordinal` tells apart the
 * changes one record holds (a COPY's multi-insert), so `w<lsn>.<ordinal>` is unique and the same
 * on every re-read of the slot.
 */
export interface WalChange {
  lsn: bigint;
  ordinal: number;
  /** Commit time of its transaction, Unix ms. */
  ts: number;
  change: RowChange;
}

/** What a batch holds, in WAL order: a `realtime` message (an event as written) or a row change. */
export type WalRecord = ({ kind: "message" } & WalEvent) | ({ kind: "change" } & WalChange);

/** A batch taken from the stream; `ackLsn` is where the slot may move once it is acknowledged. */
export interface WalBatch {
  records: WalRecord[];
  /** End of the last transaction the batch completes; null when it completes none (a long transaction's first part). */
  ackLsn: bigint | null;
}

/**
 * Splits a message's content, `<channel>\n<event>\n<1|0>\n<payload>` (names cannot hold a newline).
 * Throws on anything else: such a message was not written by the capture functions.
 */
export function parseMessage(content: string): Omit<WalEvent, "lsn" | "ts"> {
  const a = content.indexOf("\n");
  const b = a < 0 ? -1 : content.indexOf("\n", a + 1);
  const c = b < 0 ? -1 : content.indexOf("\n", b + 1);
  if (c < 0 || c !== b + 2 || (content[b + 1] !== "0" && content[b + 1] !== "1")) {
    throw new Error(`a '${WAL_PREFIX}' message that the capture functions did not write: ${JSON.stringify(content.slice(0, 80))}`);
  }
  return { channel: content.slice(0, a), event: content.slice(a + 1, b), retain: content[b + 1] === "1", data: content.slice(c + 1) };
}

type Item = { kind: "record"; record: WalRecord; bytes: number } | { kind: "commit"; end: bigint };

/** Options of {@link WalStream}. */
export interface WalStreamOptions {
  databaseUrl: string;
  slot: string;
  applicationName: string;
  /** Past this many buffered events (or bytes) the socket is paused: Postgres holds the rest. */
  maxBufferedEvents: number;
  maxBufferedBytes: number;
  /** The slot's confirmed position when streaming starts (pg_replication_slots.confirmed_flush_lsn). */
  startLsn: bigint;
  /** A table's shape was (re)described: a session's first change of it, or a change after DDL. */
  onRelation?: (relation: Relation) => void;
  /** A `realtime` message the capture functions did not write (someone else's pg_logical_emit_message) was skipped. */
  onSkipped?: (info: { lsn: bigint; error: string }) => void;
}

/**
 * One replication connection streaming the slot. Decoded events queue here until taken; the
 * queue is bounded by pausing the socket (TCP backpressure stops the walsender), so a Worker
 * outage costs the relay no memory beyond the bound: the WAL waits in Postgres.
 */
export class WalStream {
  private readonly client: pg.Client;
  private items: Item[] = [];
  private head = 0;
  private bufferedEvents = 0;
  private bufferedBytes = 0;
  private paused = false;
  /** Commit time of the transaction being received. */
  private commitTs = 0;
  /** Position reported as flushed: the slot's confirmed position. */
  private confirmed = 0n;
  /** The server's position in its last keepalive: everything before it has been received. */
  private serverEnd = 0n;
  /** Batches taken and not yet acknowledged. */
  private outstanding = 0;
  /** Between a transaction's begin and commit: its later events are still to come. */
  private inTransaction = false;
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  private closed = false;
  private statusTimer: NodeJS.Timeout | null = null;
  /** The tables' shapes, from pgoutput's Relation messages (kept for the whole stream). */
  private readonly relations = new Map<number, Relation>();
  /** The last XLogData start and how many changes began there. */
  private lastStart = -1n;
  private sameStart = 0;
  /** The START_REPLICATION query: it completes when the server ends the copy. */
  private streaming: Promise<unknown> | null = null;

  constructor(private readonly options: WalStreamOptions) {
    this.confirmed = options.startLsn;
    // The walsender writes the published tables' values with its own session's output settings,
    // which relay/pgjson.ts reads them back under.
    this.client = new pg.Client({
      connectionString: options.databaseUrl,
      application_name: options.applicationName,
      keepAlive: true,
      connectionTimeoutMillis: 10_000,
      replication: "database",
      options: textOutputOptions(),
    } as pg.ClientConfig);
    this.client.on("error", (err) => this.fail(err));
    this.client.on("end", () => this.fail(new Error("replication connection closed")));
  }

  /** Connects and starts streaming from the slot's confirmed position. */
  async start(): Promise<void> {
    await this.client.connect();
    const started = new Promise<void>((resolve) => this.connection.once("replicationStart", () => resolve()));
    this.connection.on("copyData", (msg: { chunk: Buffer }) => {
      try {
        this.onCopyData(msg.chunk);
      } catch (err) {
        this.fail(err as Error);
      }
    });
    const options = `proto_version '1', publication_names '${WAL_PUBLICATION}', messages 'true'`;
    // The query never completes while streaming; it rejects if the server refuses (slot in use, ...).
    const streaming = (this.streaming = this.client.query(`START_REPLICATION SLOT ${pg.escapeIdentifier(this.options.slot)} LOGICAL 0/0 (${options})`));
    const refused = streaming.then(() => {
      throw new Error("replication ended");
    });
    refused.catch((err: Error) => this.fail(err));
    await Promise.race([started, refused]);
    // A status every 10 s keeps the walsender from timing out on a quiet stream (wal_sender_timeout).
    this.statusTimer = setInterval(() => this.sendStatus(), 10_000);
    this.statusTimer.unref();
  }

  /**
   * Takes up to `maxEvents` events (stopping once their data passes `maxBytes`), waiting for at
   * least one; null once the stream is closed. Throws the connection's error.
   */
  async take(maxEvents: number, maxBytes: number): Promise<WalBatch | null> {
    while (this.head === this.items.length) {
      if (this.failure) throw this.failure;
      if (this.closed) return null;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = null;
    }
    const records: WalRecord[] = [];
    let bytes = 0;
    let ackLsn: bigint | null = null;
    while (this.head < this.items.length) {
      const item = this.items[this.head]!;
      if (item.kind === "commit") {
        ackLsn = item.end;
      } else {
        if (records.length >= maxEvents || (records.length > 0 && bytes >= maxBytes)) break;
        records.push(item.record);
        bytes += item.bytes;
        this.bufferedEvents--;
        this.bufferedBytes -= item.bytes;
      }
      this.head++;
    }
    this.compact();
    this.outstanding++;
    if (this.paused && this.bufferedEvents <= this.options.maxBufferedEvents / 2 && this.bufferedBytes <= this.options.maxBufferedBytes / 2) {
      this.paused = false;
      this.connection.stream?.resume();
    }
    return { records, ackLsn };
  }

  /** The Worker acknowledged the batch: the slot may move to its `ackLsn`. */
  ack(batch: WalBatch): void {
    this.outstanding--;
    if (batch.ackLsn !== null) this.confirm(batch.ackLsn);
    this.absorbCommits();
    this.advanceIdle();
    this.sendStatus();
  }

  /** Moves the confirmed position forward to `lsn` (never back). */
  private confirm(lsn: bigint): void {
    if (lsn > this.confirmed) this.confirmed = lsn;
  }

  /** Drops the taken items from the front of the queue. */
  private compact(): void {
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 4096) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  /**
   * Commits waiting at the head of the queue, with nothing in flight, end transactions whose
   * events are all acknowledged (a batch that stopped mid-transaction): the slot can pass them.
   */
  private absorbCommits(): void {
    if (this.outstanding !== 0) return;
    for (let item = this.items[this.head]; item?.kind === "commit"; item = this.items[++this.head]) this.confirm(item.end);
    this.compact();
  }

  /** The slot's confirmed position as this relay last reported it. */
  get confirmedLsn(): bigint {
    return this.confirmed;
  }

  /**
   * Ends streaming. On a healthy connection the last status goes out, then CopyDone, and the
   * server's end of the copy is awaited (up to 2 s): the walsender handles messages in order, so
   * the slot has taken the last acknowledged position before the connection closes. Closing at
   * once could lose that status, and the next relay would send the last batch again.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.failure && this.streaming) {
      this.absorbCommits();
      this.sendStatus();
      this.connection.endCopyFrom();
      if (this.paused) this.connection.stream?.resume(); // the server's answer must be read
      await Promise.race([this.streaming.catch(() => undefined), new Promise((r) => setTimeout(r, 2000).unref())]);
    }
    this.closed = true;
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.waiter?.();
    this.client.removeAllListeners("end");
    this.client.on("error", () => undefined);
    await this.client.end().catch(() => undefined);
  }

  /**
   * With nothing buffered or in flight, everything the server sent is delivered: the slot can move
   * to the server's last position, so WAL written by other work (tables nobody watches) is not held.
   */
  private advanceIdle(): void {
    if (this.outstanding === 0 && !this.inTransaction && this.head === this.items.length) this.confirm(this.serverEnd);
  }

  private onCopyData(chunk: Buffer): void {
    if (chunk[0] === 0x6b /* k: keepalive */) {
      this.serverEnd = chunk.readBigUInt64BE(1);
      this.advanceIdle();
      if (chunk[17] === 1) this.sendStatus();
      return;
    }
    if (chunk[0] !== 0x77 /* w: XLogData */) return;
    // XLogData: the WAL position its data starts at, the server's end, the send time, the data.
    const start = chunk.readBigUInt64BE(1);
    const message = decodePgOutput(chunk.subarray(25));
    switch (message.tag) {
      case "begin":
        this.commitTs = message.commitTime;
        this.inTransaction = true;
        return;
      case "message": {
        if (message.prefix !== WAL_PREFIX) {
          // Someone else's message (the relay's own heartbeat among them): outside a transaction
          // it is a point the slot may move past at once, when nothing of ours waits before it.
          if (!message.transactional) {
            if (message.lsn > this.serverEnd) this.serverEnd = message.lsn;
            const before = this.confirmed;
            this.advanceIdle();
            if (this.confirmed !== before) this.sendStatus();
          }
          return;
        }
        let parsed: Omit<WalEvent, "lsn" | "ts">;
        try {
          parsed = parseMessage(message.content.toString("utf8"));
        } catch (err) {
          // Not an event (nothing of ours is lost); stopping on it would stop delivery for good.
          this.options.onSkipped?.({ lsn: message.lsn, error: (err as Error).message });
          return;
        }
        return this.push({ kind: "message", lsn: message.lsn, ts: this.commitTs, ...parsed }, message.content.length);
      }
      case "relation":
        // Sent before a table's first change in this stream and after each change of its shape;
        // the changes after it are of that shape.
        this.relations.set(message.relation.oid, message.relation);
        this.options.onRelation?.(message.relation);
        return;
      case "insert":
      case "update":
      case "delete": {
        const relation = this.relations.get(message.relation);
        if (!relation) throw new Error(`pgoutput sent a change of relation ${message.relation} before describing it`);
        const change: RowChange =
          message.tag === "insert"
            ? { op: "insert", relation, new: message.new }
            : message.tag === "update"
              ? { op: "update", relation, old: message.old, oldIsKey: message.oldIsKey, new: message.new }
              : { op: "delete", relation, old: message.old, oldIsKey: message.oldIsKey };
        const bytes =
          tupleBytes(message.tag === "delete" ? message.old : message.new) + (message.tag === "update" && message.old ? tupleBytes(message.old) : 0);
        return this.push({ kind: "change", lsn: start, ordinal: this.ordinal(start), ts: this.commitTs, change }, bytes);
      }
      case "truncate": {
        const relations = message.relations.map((oid) => this.relations.get(oid)).filter((r): r is Relation => r !== undefined);
        return this.push({ kind: "change", lsn: start, ordinal: this.ordinal(start), ts: this.commitTs, change: { op: "truncate", relations } }, 64);
      }
      case "commit": {
        const end = message.endLsn;
        this.inTransaction = false;
        // It moves the position once everything before it is acknowledged: at once when every
        // event before it was (or it had none of ours).
        const last = this.items[this.items.length - 1];
        if (last?.kind === "commit") last.end = end;
        else this.items.push({ kind: "commit", end });
        this.absorbCommits();
        if (this.head < this.items.length) this.waiter?.();
        return;
      }
      default:
        // Type and origin messages: types are read from the catalog by oid (relay/pgjson.ts).
        return;
    }
  }

  /** Queues a record; pauses the socket past the buffer's bounds (Postgres holds the rest). */
  private push(record: WalRecord, bytes: number): void {
    this.items.push({ kind: "record", record, bytes });
    this.bufferedEvents++;
    this.bufferedBytes += bytes;
    if (!this.paused && (this.bufferedEvents > this.options.maxBufferedEvents || this.bufferedBytes > this.options.maxBufferedBytes)) {
      this.paused = true;
      this.connection.stream?.pause();
    }
    this.waiter?.();
  }

  /** 0 for the first change starting at `lsn`, 1 for the next one there (one WAL record, several rows), ... */
  private ordinal(lsn: bigint): number {
    if (lsn === this.lastStart) return ++this.sameStart;
    this.lastStart = lsn;
    return (this.sameStart = 0);
  }

  /** Standby status update: written = flushed = applied = the confirmed position. */
  private sendStatus(): void {
    if (this.closed || this.failure) return;
    const msg = Buffer.alloc(34);
    msg[0] = 0x72; // r
    msg.writeBigUInt64BE(this.confirmed, 1);
    msg.writeBigUInt64BE(this.confirmed, 9);
    msg.writeBigUInt64BE(this.confirmed, 17);
    msg.writeBigInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25);
    msg[33] = 0; // no reply requested
    this.connection.sendCopyFromChunk(msg);
  }

  /** pg's connection under the client: the replication protocol's messages go through it. */
  private get connection(): ReplicationConnection {
    return (this.client as unknown as { connection: ReplicationConnection }).connection;
  }

  private fail(err: Error): void {
    if (this.failure || this.closed) return;
    this.failure = err;
    this.waiter?.();
  }
}

/** The parts of pg's Connection the replication protocol uses (not in its typings). */
interface ReplicationConnection {
  on(event: "copyData", listener: (msg: { chunk: Buffer }) => void): void;
  once(event: "replicationStart", listener: () => void): void;
  sendCopyFromChunk(chunk: Buffer): void;
  /** Sends CopyDone. */
  endCopyFrom(): void;
  stream?: { pause(): void; resume(): void };
}

/**
 * Makes this database capture to the WAL for `slot`, as `mode` says ('wal': the triggers write
 * messages; 'publication': the watched tables' own changes, no trigger): the publication and the
 * slot if missing, then `realtime.set_capture(mode)` unless capture is that already (the order
 * matters: a change captured to the WAL before the slot exists would be lost). Errors say what to
 * change.
 */
export async function ensureWalCapture(db: Queryable, slot: string, mode: "wal" | "publication" = "wal"): Promise<{ createdSlot: boolean }> {
  const { rows: level } = await db.query<{ wal_level: string }>("show wal_level");
  if (level[0]?.wal_level !== "logical") {
    throw new WalSetupError(
      `--source ${mode} needs wal_level = logical, and this Postgres has ${level[0]?.wal_level}: run ALTER SYSTEM SET wal_level = logical and restart Postgres (on a managed database, turn on its logical replication setting), or run the relay with --source outbox`,
    );
  }
  const step = async (what: string, sql: string, hint: string) => {
    try {
      return await db.query(sql);
    } catch (err) {
      throw new WalSetupError(`--source ${mode} could not ${what}: ${(err as Error).message}. ${hint}`);
    }
  };
  await step(
    `create the publication ${WAL_PUBLICATION}`,
    `do $$ begin if not exists (select from pg_publication where pubname = '${WAL_PUBLICATION}') then create publication ${WAL_PUBLICATION} with (publish_via_partition_root = true); end if; end $$`,
    `Create it once as the database owner: create publication ${WAL_PUBLICATION};`,
  );
  const { rows } = await db.query<{ plugin: string }>("select plugin from pg_replication_slots where slot_name = $1 and database = current_database()", [slot]);
  let createdSlot = false;
  if (rows.length === 0) {
    // From Postgres 17 the slot is a failover slot: a standby with sync_replication_slots = on
    // keeps a copy, so after a failover the relay resumes on the new primary where it stopped.
    const { rows: version } = await db.query<{ v: string }>("select current_setting('server_version_num') as v");
    const failover = Number(version[0]?.v ?? 0) >= 170000;
    await step(
      `create its replication slot ${slot}`,
      failover
        ? `select pg_create_logical_replication_slot('${slot}', 'pgoutput', failover => true)`
        : `select pg_create_logical_replication_slot('${slot}', 'pgoutput')`,
      `The relay's role needs the REPLICATION attribute (alter role <relay role> replication), or create the slot once as a superuser: select pg_create_logical_replication_slot('${slot}', 'pgoutput');`,
    );
    createdSlot = true;
  } else if (rows[0]!.plugin !== "pgoutput") {
    throw new WalSetupError(
      `replication slot ${slot} exists with plugin ${rows[0]!.plugin}, not pgoutput: drop it (select pg_drop_replication_slot('${slot}')) or give the relay another --name`,
    );
  }
  const { rows: current } = await db.query<{ capture: string }>("select capture from realtime.installation");
  if (current[0]?.capture !== mode) {
    await step(
      `switch capture to ${mode}`,
      `select realtime.set_capture('${mode}')`,
      `Run it as the owner of the realtime schema and the watched tables: select realtime.set_capture('${mode}');`,
    );
  }
  return { createdSlot };
}

/** `--source wal` cannot run against this database; the message says what to change. */
export class WalSetupError extends Error {
  override readonly name = "WalSetupError";
  readonly code = "wal_setup";
}
