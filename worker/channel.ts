/**
 * The Channel Durable Object: one per channel, its root. It sequences events, keeps the replay
 * log, dedupe ids and retained rows in its SQLite, and sends each publish to its sockets (one frame
 * per filter). A sharded channel (SHARDS) keeps its sockets on shard objects instead
 * (worker/shard.ts): the root still stores and sequences everything once, fans each publish out
 * with one RPC per shard, answers the shards' joins (welcome, replay, snapshot) from its log, and
 * keeps the channel-wide presence list.
 *
 * Hibernation-safe by construction: everything needed after a wake-up is in SQLite (seq, epoch,
 * log, state, filters, shard members) or in socket attachments and tags; the only timer is the
 * storage alarm of a conflating channel, and pings are answered by the runtime's auto-response.
 */
import type { ChangeText, ErrorCode, IngestEvent, IngestResult, PresenceMember, ResetReason, RowFilter, ServerFrame } from "../protocol/index.ts";
import {
  channelMatches,
  eventJson,
  eventsFrame,
  fillUnchanged,
  markerJson,
  matchesEvent,
  matchesRowText,
  parseFilter,
  readChange,
  rowKey,
  SIGNATURE_TOLERANCE_SECONDS,
  snapshotFrame,
  snapshotRowJson,
  utf8Length,
} from "../protocol/index.ts";
import type { Env } from "./env.ts";
import { CHANNEL_NAME_HEADER, filterData, member, send, SHARD_HEADER, SHARD_SOCKETS_HEADER, SocketHub, type Outgoing, type SocketAttachment } from "./hub.ts";
import { log } from "./log.ts";
import { RETAINED_SCHEMA, RetainedState } from "./retained.ts";
import type { ChannelShard } from "./shard.ts";

export { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, SHARD_HEADER, USER_HEADER } from "./hub.ts";

/** What a joining socket asks for in its URL: `since` and `epoch` to resume, `snapshot=1` for the retained rows even before there are any. */
export interface JoinQuery {
  since: string | null;
  epoch: string | null;
  snapshot: boolean;
}

/** The join parameters of a socket's URL. */
export function joinQuery(url: URL): JoinQuery {
  return { since: url.searchParams.get("since"), epoch: url.searchParams.get("epoch"), snapshot: url.searchParams.get("snapshot") === "1" };
}

/** Ids remembered for dedupe beyond the replay log: covers a relay re-sending its last batches. */
const DEDUPE_MIN_IDS = 10_000;

/**
 * And ids are remembered at least this long: twice the signature tolerance, so a captured ingest
 * request replayed while its signature is still accepted finds every one of its ids here.
 */
const DEDUPE_MIN_AGE_MS = 2 * SIGNATURE_TOLERANCE_SECONDS * 1000;

/** Publishes between two trims of the log (see publish()). */
const TRIM_EVERY = 100;
const TRIM_MAX_INTERVAL_MS = 60_000;

/** Replay is sent in frames of at most this many events, so one frame stays small. */
const REPLAY_FRAME_EVENTS = 500;

/**
 * Event data is stored in pieces of at most this many UTF-16 units (at most 1.5 MB of UTF-8):
 * Durable Object SQLite refuses strings and rows over 2 MB, and an event may be larger.
 */
const LOG_CHUNK_UNITS = 500_000;

const SCHEMA = `
  create table if not exists meta (key text primary key, value text not null);
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
  create table if not exists shard_members (id text primary key, shard integer not null, member text not null);
  ${RETAINED_SCHEMA}
`;

/** What a socket is sent after `welcome` when it joins: replay, or a reset, or a snapshot. */
export type Join =
  | { ok: true; channel: string; epoch: string; seq: number; frames: string[] }
  | { ok: false; code: ErrorCode; message: string };

/** A channel's counters, as `GET /channels/:name/stats` returns them. */
export interface ChannelStats {
  channel: string | null;
  epoch: string;
  seq: number;
  /** Open WebSockets (hibernated ones included), on the root and every shard. */
  sockets: number;
  /** Shard objects holding this channel's sockets (0: the root holds them). */
  shards: number;
  /** Sockets listed in presence. */
  presence: number;
  replayLogEvents: number;
  replayLogOldestSeq: number | null;
  lastPublishAt: string | null;
  /** Times the object was constructed: its first use, then once per wake-up from hibernation or eviction. */
  wakes: number;
  /** Retained rows (watches with `retain => true`). */
  retained: { rows: number; bytes: number; overflow: boolean };
  /** Conflation window in ms, or null. */
  conflateMs: number | null;
  /** RPCs sent to shards since this object last woke (fewer than publishes x shards under load: coalesced). */
  shardDeliveries: number;
}

export class Channel extends SocketHub {
  private epoch: string;
  private readonly meta: Map<string, string>;
  private readonly state: RetainedState;
  private seq: number;
  private name: string | null;
  /** Seq and time of the last trim (in memory: after a wake-up the first publish trims). */
  private trimmedAt = 0;
  private trimmedTime = 0;
  private alarmPending = false;
  /** Each shard's lane: one delivery in flight, the next one collecting (in memory). */
  private readonly lanes = new Map<number, ShardLane>();
  /** Deliveries (RPCs) sent to shards since this object last woke. */
  private shardDeliveries = 0;
  /** Sockets each automatic shard last reported (in memory; a woken root learns them again). */
  private readonly shardSockets = new Map<number, number>();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql.exec(SCHEMA);
    // Objects created before seen.at existed get the column (every id counts as old).
    if (!this.sql.exec<{ name: string }>("pragma table_info(seen)").toArray().some((c) => c.name === "at")) {
      this.sql.exec("alter table seen add column at integer not null default 0");
    }
    this.meta = new Map();
    this.loadMeta();
    let epoch = this.meta.get("epoch");
    if (!epoch) {
      // A new epoch means a new history: a client holding seqs of another one must reset.
      epoch = crypto.randomUUID();
      this.setMeta("epoch", epoch);
      this.setMeta("seq", "0");
    }
    this.epoch = epoch;
    this.seq = Number(this.meta.get("seq") ?? 0);
    this.name = this.meta.get("name") ?? null;
    // Counts constructions: each one is a wake-up (first use, or after hibernation/eviction).
    this.setMeta("wakes", String(Number(this.meta.get("wakes") ?? 0) + 1));
    this.state = new RetainedState(this.sql, this.config.stateMaxRows, this.config.stateMaxBytes, {
      get: (k) => this.meta.get(k),
      set: (k, v) => this.setMeta(k, v),
    });
  }

  /** Reads the meta table into memory (again, after a rolled-back transaction). */
  private loadMeta(): void {
    this.meta.clear();
    for (const r of this.sql.exec<{ key: string; value: string }>("select key, value from meta")) this.meta.set(r.key, r.value);
  }

  private setMeta(key: string, value: string): void {
    this.meta.set(key, value);
    this.sql.exec("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value", key, value);
  }

  /** The conflation window of this channel, or null (CONFLATE, by name pattern). */
  private get conflateMs(): number | null {
    if (!this.name) return null;
    return this.config.conflate.find((c) => channelMatches(c.pattern, this.name!, null))?.ms ?? null;
  }

  /** How many shards hold this channel's sockets: SHARDS by name pattern, else those added automatically. */
  private shardTotal(): number {
    if (!this.name) return 0;
    return shardCount(this.config.shards, this.name) || Number(this.meta.get("auto_shards") ?? 0);
  }

  private shardStub(i: number): DurableObjectStub<ChannelShard> {
    return this.env.SHARD.get(this.env.SHARD.idFromName(shardName(this.name!, i)));
  }

  /** The shards holding this channel's sockets; empty when unsharded. */
  private shards(): DurableObjectStub<ChannelShard>[] {
    return Array.from({ length: this.shardTotal() }, (_, i) => this.shardStub(i));
  }

  /**
   * AUTO_SHARD_SOCKETS: a socket for a root already holding that many goes to the shard with the
   * fewest sockets (as each last reported); when even that one is full, the channel adds a shard
   * (persisted: a channel never loses a shard, and deliveries reach every shard from the moment it
   * is added, before its first socket asks the root what it is owed).
   */
  private async toAutoShard(request: Request): Promise<Response> {
    const limit = this.config.autoShardSockets;
    let active = Number(this.meta.get("auto_shards") ?? 0);
    let pick = -1;
    let least = Infinity;
    for (let i = 0; i < active; i++) {
      const n = this.shardSockets.get(i) ?? 0;
      if (n < least) [pick, least] = [i, n];
    }
    if (pick < 0 || (least >= limit && active < MAX_AUTO_SHARDS)) {
      pick = active++;
      this.setMeta("auto_shards", String(active));
      log("info", "channel added a shard", { channel: this.name, shards: active, socketsPerObject: limit });
    }
    this.shardSockets.set(pick, (this.shardSockets.get(pick) ?? 0) + 1);
    const headers = new Headers(request.headers);
    headers.set(SHARD_HEADER, String(pick));
    headers.set(SHARD_SOCKETS_HEADER, "?");
    const res = await this.shardStub(pick).fetch(new Request(request.url, { headers }));
    const reported = Number(res.headers.get(SHARD_SOCKETS_HEADER) ?? NaN);
    if (Number.isFinite(reported)) this.shardSockets.set(pick, reported);
    return new Response(res.body, { status: res.status, webSocket: res.webSocket, headers: publicHeaders(res.headers) });
  }

  /**
   * Stores new events (dropping ids already stored), assigns each a seq, updates retained rows,
   * and delivers them (or, conflating, at the end of the window). Storage is committed before the
   * events leave (output gates), so the Worker's 200 means durable and no socket sees an event
   * this object could lose. Event data is stored and sent as the JSON text it arrived as.
   *
   * No event can stop the others: should the batch fail to store as a whole, its events are
   * stored one by one, and one that still fails alone is stored as an `unstorable` marker (logged
   * with its source id). Only a failure of storage itself (the marker fails too) fails the publish,
   * and the relay retries it.
   */
  async publish(channel: string, events: IngestEvent[]): Promise<IngestResult> {
    this.remember(channel);
    let stored: Stored;
    try {
      stored = this.store(events);
    } catch (err) {
      log("warn", "a publish could not be stored as a whole; storing its events one by one", { channel: this.name, events: events.length, error: String(err) });
      stored = { fresh: [], duplicates: 0, markers: 0 };
      for (const e of events) {
        let one: Stored | null;
        try {
          // Twice: a failure that is not this event's own (storage blinking) gets a second chance.
          one = this.store([e]);
        } catch {
          one = null;
        }
        try {
          one ??= this.store([e]);
        } catch (error) {
          log("error", "event could not be stored; a marker takes its place", { channel: this.name, id: e.id, event: e.event, bytes: utf8Length(e.data), error: String(error) });
          // The marker is not retained (the row's state may be what could not be stored); should
          // even its key be unstorable, a marker without it. Past that, storage itself is failing.
          const marker = { ...e, data: markerJson(e.data, "unstorable"), retain: false };
          try {
            one = this.store([marker]);
          } catch {
            one = this.store([{ ...marker, data: markerJson("null", "unstorable", utf8Length(e.data)) }]);
          }
          one.markers++;
          this.setMeta("unstorable", String(Number(this.meta.get("unstorable") ?? 0) + 1));
        }
        for (const f of one.fresh) stored.fresh.push(f);
        stored.resets = (stored.resets ?? 0) + (one.resets ?? 0);
        stored.duplicates += one.duplicates;
        stored.markers += one.markers;
      }
    }
    const { fresh, duplicates, markers } = stored;
    if (stored.resets) {
      // Every socket reconnects and is told (reset "lost", and the snapshot) as it joins again.
      for (const ws of this.ctx.getWebSockets()) ws.close(1012, "events were lost at the source: reconnect");
      await Promise.allSettled(this.shards().map((s) => s.deliver(this.name!, this.epoch, [])));
    }
    if (fresh.length > 0) {
      const window = this.conflateMs;
      if (window === null) await this.deliver(fresh);
      else if (!this.alarmPending) {
        // Conflating: deliver at the end of the window, from the log (see alarm()).
        this.alarmPending = true;
        void this.ctx.storage.setAlarm(Date.now() + window);
      }
    }
    const accepted = fresh.length + (stored.resets ?? 0);
    return markers > 0 ? { accepted, duplicates, markers } : { accepted, duplicates };
  }

  /**
   * One transaction: the new events of `events` in the log and `seen`, their rows in the retained
   * state. On a retaining channel, a change whose row is larger than STATE_MAX_ROW_BYTES is stored
   * (and sent) as a `row_too_large` marker, so that every client, live or joining later, sees the
   * same thing for that row. Throws with nothing changed, in storage or in memory.
   */
  private store(events: IngestEvent[]): Stored {
    const fresh: Outgoing[] = [];
    const retained: { seq: number; change: ChangeText }[] = [];
    const rows: { s: number; i: string; e: string; d: string; p: number; t: number }[] = [];
    const parts: [seq: number, part: number, chunk: string][] = [];
    // Rows this batch changed, by key: their latest version (for filling unchanged columns).
    const latest = new Map<string, string | null | undefined>();
    let resets = 0;
    const epochBefore = this.epoch;
    let duplicates = 0;
    let markers = 0;
    const now = Date.now();
    const before = this.seq;
    try {
      this.ctx.storage.transactionSync(() => {
        // A constant number of statements per publish, whatever its size: each sql.exec is a
        // call into the runtime, and one per event per table made a 400-event batch cost ~0.2 ms
        // an event here. The rows travel as one JSON parameter (DO SQLite allows 100 bound
        // parameters per statement); event data rides in it as a JSON string, so SQLite stores
        // its exact text.
        const known = new Set(
          this.sql.exec<{ id: string }>("select value as id from json_each(?) where value in (select id from seen)", JSON.stringify(events.map((e) => e.id))).toArray().map((r) => r.id),
        );
        for (const e of events) {
          if (known.has(e.id)) {
            duplicates++;
            continue;
          }
          known.add(e.id); // a repeat inside this batch is a duplicate too
          if (e.reset) {
            // Events of this channel were lost at the source: its history ends here. A new epoch,
            // with an empty log and no retained rows (the relay captures the retained rows again);
            // the ids stay known, so a re-sent batch is still dropped.
            rows.length = 0;
            parts.length = 0;
            retained.length = 0;
            fresh.length = 0;
            latest.clear();
            this.sql.exec("delete from log");
            this.sql.exec("delete from log_part");
            this.state.clear();
            this.setMeta("previous_epoch", this.epoch);
            this.setMeta("epoch_reason", "lost");
            this.epoch = crypto.randomUUID();
            this.setMeta("epoch", this.epoch);
            this.sql.exec("insert into seen (id, seq, at) values (?, ?, ?)", e.id, this.seq, now);
            resets++;
            log("warn", "events were lost at the source: this channel starts a new epoch", { channel: this.name, id: e.id, epoch: this.epoch });
            continue;
          }
          const seq = ++this.seq;
          let data = e.data;
          if (e.retain) {
            let change = readChange(data);
            if (change?.unchanged && change.key !== null) {
              // Decoded from a publication, an update carries no value for a TOASTed column it did
              // not change: the row this channel retains has it (or an earlier event of this
              // batch, which it does not retain yet). Filled here, before it is stored, so live
              // sockets, replay and the snapshot all get the whole row.
              const k = rowKey(change.schema, change.table, change.key);
              const base = latest.has(k) ? latest.get(k) : this.state.active && !this.state.overflowed ? this.state.get(k) : undefined;
              const filled = base ? fillUnchanged(data, base) : null;
              if (filled !== null) {
                data = filled;
                change = readChange(data);
              }
            }
            if (change?.new != null && !change.marker && utf8Length(change.new) > this.config.stateMaxRowBytes) {
              log("warn", "row too large to retain; a marker takes its place", { channel: this.name, id: e.id, bytes: utf8Length(data), limit: this.config.stateMaxRowBytes });
              data = markerJson(data, "row_too_large");
              change = { ...change, new: null, marker: true };
              markers++;
            }
            if (change) {
              retained.push({ seq, change });
              if (change.key !== null) latest.set(rowKey(change.schema, change.table, change.key), change.op === "DELETE" ? undefined : change.new);
            }
          }
          const [head, ...rest] = chunks(data);
          rows.push({ s: seq, i: e.id, e: e.event, d: head ?? "", p: rest.length, t: e.ts });
          rest.forEach((chunk, i) => parts.push([seq, i + 1, chunk]));
          fresh.push({ seq, json: eventJson(seq, e.id, e.event, data, e.ts), data });
        }
        if (rows.length === 0) {
          if (resets > 0) this.setMeta("seq", String(this.seq));
          return;
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
        this.state.apply(retained);
        this.setMeta("seq", String(this.seq));
        this.setMeta("last_publish", String(now));
        // Trimming costs three statements; doing it every TRIM_EVERY events (or when the oldest
        // entry may have aged out) keeps the bounds within a few percent for a fraction of the cost.
        if (this.seq - this.trimmedAt >= TRIM_EVERY || now - this.trimmedTime >= TRIM_MAX_INTERVAL_MS) this.trim(now);
      });
    } catch (err) {
      // Storage rolled back; so does what this object holds in memory.
      this.seq = before;
      this.epoch = epochBefore;
      this.loadMeta();
      throw err;
    }
    return { fresh, duplicates, markers, resets };
  }

  /**
   * End of a conflation window: sends what arrived since the last delivery, keeping only the
   * latest event per row (key) among change events; other events all go out.
   */
  override async alarm(): Promise<void> {
    this.alarmPending = false;
    const from = Number(this.meta.get("delivered_seq") ?? 0);
    if (from >= this.seq) return;
    const latest = new Map<string, Outgoing>();
    let anonymous = 0;
    for (const e of this.logFrom(from)) {
      const change = readChange(e.data!);
      const id = change?.key != null ? rowKey(change.schema, change.table, change.key) : `#${anonymous++}`;
      latest.delete(id); // re-inserted: Map order follows the latest seq
      latest.set(id, e);
    }
    this.setMeta("delivered_seq", String(this.seq));
    await this.deliver([...latest.values()].sort((a, b) => a.seq - b.seq));
  }

  /**
   * To this object's sockets, and to every shard with one RPC each. The publish does not wait for
   * the shards (its events are stored: a shard that misses them fills the gap from this log), so
   * a hot sharded channel does not hold up the relay's batch, and with it every other channel of
   * the batch; it waits only when a shard is falling behind (more queued than one coalesced
   * delivery), which slows the relay down instead of letting the queue grow.
   */
  private async deliver(events: Outgoing[]): Promise<void> {
    this.deliverLocal(events);
    const count = this.shardTotal();
    if (count === 0) return;
    const wire = events.map((e) => ({ seq: e.seq, json: e.json }));
    const bytes = wire.reduce((n, e) => n + e.json.length, 0);
    const sent = Array.from({ length: count }, (_, i) => this.toShard(i, wire, bytes));
    if ([...this.lanes.values()].some((lane) => lane.queue.length > 1)) await Promise.all(sent);
  }

  /**
   * Queues `events` for shard `i`. One delivery per shard is in flight at a time, so a later
   * publish never overtakes an earlier one on its way to a shard; publishes that arrive while one
   * is in flight are coalesced into the next delivery (up to SHARD_BATCH_BYTES), so a shard busy
   * sending to its sockets gets one RPC, and each socket one frame, for all of them. Under load
   * the root's RPCs per shard fall to one per shard round trip, whatever the publish rate.
   * Resolves (never rejects) once the delivery carrying these events (`bytes` of JSON) is done
   * or given up.
   */
  private toShard(i: number, wire: WireEvent[], bytes: number): Promise<void> {
    let lane = this.lanes.get(i);
    if (!lane) this.lanes.set(i, (lane = { busy: false, queue: [] }));
    let batch = lane.queue.at(-1);
    if (!batch || batch.bytes + bytes > SHARD_BATCH_BYTES) {
      let resolve!: () => void;
      const done = new Promise<void>((res) => (resolve = res));
      batch = { events: [], bytes: 0, done, resolve };
      lane.queue.push(batch);
    }
    for (const e of wire) batch.events.push(e); // (a spread of a long array would overflow the stack)
    batch.bytes += bytes;
    if (!lane.busy) this.pump(i, lane);
    return batch.done;
  }

  /** Sends shard `i` its next collected delivery, then the one after, until the lane is empty. */
  private pump(i: number, lane: ShardLane): void {
    const batch = lane.queue.shift();
    if (!batch) {
      lane.busy = false;
      return;
    }
    lane.busy = true;
    void this.sendToShard(i, batch.events).finally(() => {
      batch.resolve();
      this.pump(i, lane);
    });
  }

  /**
   * One delivery, retried a few times (a shard drops seqs it already has, so a retry is safe);
   * past that, the shard fills the gap from this log with its next delivery.
   */
  private async sendToShard(i: number, events: WireEvent[]): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.shardDeliveries++;
      try {
        await this.shardStub(i).deliver(this.name!, this.epoch, events);
        return;
      } catch (err) {
        if (attempt >= SHARD_RETRY_MS.length) {
          log("warn", "shard delivery failed; the shard fills the gap with its next delivery", { shard: i, error: String(err) });
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, SHARD_RETRY_MS[attempt]));
      }
    }
  }

  /** Accepts a WebSocket (forwarded by the Worker), greets it, and replays what it missed. */
  override async fetch(request: Request): Promise<Response> {
    if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") {
      return Response.json({ error: { code: "upgrade_required", message: "expected a WebSocket upgrade" } }, { status: 426 });
    }
    const channel = request.headers.get(CHANNEL_NAME_HEADER);
    if (channel) this.remember(channel);
    const auto = this.config.autoShardSockets;
    if (auto > 0 && this.name && shardCount(this.config.shards, this.name) === 0 && this.ctx.getWebSockets().length >= auto) {
      return this.toAutoShard(request);
    }
    const accepted = await this.accept(request);
    if (accepted.refused) return accepted.response;
    const { server, me, filter } = accepted;
    // No await from here on: a publish cannot slip in between, so the socket sees welcome, then
    // snapshot or replay, then live events, with no gap and no overlap.
    const url = new URL(request.url);
    const join = this.join(joinQuery(url), filter);
    if (!join.ok) {
      send(server, { type: "welcome", channel: this.name ?? "", epoch: this.epoch, seq: this.seq, member: me.id });
      this.closeWith(server, me, join.code, join.message);
      return accepted.response;
    }
    send(server, { type: "welcome", channel: join.channel, epoch: join.epoch, seq: join.seq, member: me.id });
    for (const frame of join.frames) server.send(frame);
    if (me.presence) {
      send(server, { type: "presence", members: this.allMembers() });
      await this.presenceDiff({ type: "presence_diff", joins: [member(me)], leaves: [] }, server);
    }
    return accepted.response;
  }

  /**
   * A shard's new socket: what it is owed after `welcome` (replay, or reset and snapshot, or the
   * snapshot of a fresh subscriber), with the filter applied. One call, atomic: the seq returned is
   * the one those frames end at, and the shard sends live events after it.
   */
  sync(channel: string, query: JoinQuery, filterText: string | null): Join {
    this.remember(channel);
    const parsed = filterText ? parseFilter(filterText) : null;
    if (parsed && !parsed.ok) return { ok: false, code: "invalid_filter", message: parsed.message };
    return this.join(query, parsed?.ok ? parsed.filter : null);
  }

  /** Events after `after` up to `upTo`, for a shard that missed a batch; null if the log no longer has them. */
  eventsAfter(after: number, upTo: number): { seq: number; json: string }[] | null {
    const oldest = this.sql.exec<{ seq: number | null }>("select min(seq) as seq from log").one().seq;
    if (oldest === null || after < oldest - 1) return null;
    return this.logFrom(after)
      .filter((e) => e.seq <= upTo)
      .map((e) => ({ seq: e.seq, json: e.json }));
  }

  /** Presence of a shard's socket: registered here, announced everywhere; returns the full list. */
  async presenceJoin(m: PresenceMember, shard: number): Promise<PresenceMember[]> {
    this.sql.exec("insert into shard_members (id, shard, member) values (?, ?, ?) on conflict (id) do update set member = excluded.member", m.id, shard, JSON.stringify(m));
    await this.presenceDiff({ type: "presence_diff", joins: [m], leaves: [] });
    return this.allMembers();
  }

  async presenceUpdate(m: PresenceMember): Promise<void> {
    this.sql.exec("update shard_members set member = ? where id = ?", JSON.stringify(m), m.id);
    await this.presenceDiff({ type: "presence_diff", joins: [m], leaves: [] });
  }

  async presenceLeave(m: PresenceMember): Promise<void> {
    this.sql.exec("delete from shard_members where id = ?", m.id);
    await this.presenceDiff({ type: "presence_diff", joins: [], leaves: [m] });
  }

  /** A client broadcast on shard `from` (which already sent it to its own sockets). */
  async broadcastFromShard(frame: string, from: number): Promise<void> {
    this.toAll(frame);
    await Promise.allSettled(this.shards().map((s, i) => (i === from ? null : s.broadcast(frame))));
  }

  protected override presenceChanged(ws: WebSocket, me: SocketAttachment): void {
    void this.presenceDiff({ type: "presence_diff", joins: [member(me)], leaves: [] });
  }

  protected override memberLeft(ws: WebSocket, me: SocketAttachment): void {
    void this.presenceDiff({ type: "presence_diff", joins: [], leaves: [member(me)] }, ws);
  }

  protected override broadcastFrom(ws: WebSocket, _me: SocketAttachment, frame: string): void {
    this.toAll(frame, ws);
    void Promise.allSettled(this.shards().map((s) => s.broadcast(frame)));
  }

  /** Members on this object's sockets and on every shard's. */
  private allMembers(): PresenceMember[] {
    const remote = this.sql.exec<{ member: string }>("select member from shard_members order by rowid").toArray().map((r) => JSON.parse(r.member) as PresenceMember);
    return [...this.localMembers(), ...remote];
  }

  /** A presence change, to this object's presence members (but `except`) and to every shard's. */
  private async presenceDiff(frame: ServerFrame, except?: WebSocket): Promise<void> {
    const text = JSON.stringify(frame);
    this.toLocalPresence(text, except);
    await Promise.allSettled(this.shards().map((s) => s.presence(text)));
  }

  /** What a socket joining with `since`/`epoch` (or neither) is sent after its welcome. */
  private join({ since, epoch, snapshot }: JoinQuery, filter: RowFilter | null): Join {
    const base = { ok: true as const, channel: this.name ?? "", epoch: this.epoch, seq: this.seq };
    if (since === null || since === "") return { ...base, frames: this.snapshotFrames(filter, snapshot) };
    if (!/^\d{1,15}$/.test(since)) return { ok: false, code: "invalid_query", message: "since must be a non-negative integer: the seq of the last event received" };
    const sinceSeq = Number(since);
    if (epoch !== this.epoch || sinceSeq > this.seq) {
      // A client of the epoch a source loss ended is told so; any other epoch is just not this one.
      const lost = epoch !== null && epoch === this.meta.get("previous_epoch") && this.meta.get("epoch_reason") === "lost";
      return { ...base, frames: this.resetFrames(lost ? "lost" : "epoch", filter, snapshot) };
    }
    if (sinceSeq === this.seq) return { ...base, frames: [] };
    this.trim(Date.now());
    const oldest = this.sql.exec<{ seq: number | null }>("select min(seq) as seq from log").one().seq;
    if (oldest === null || sinceSeq < oldest - 1) return { ...base, frames: this.resetFrames("gap", filter, snapshot) };
    const frames: string[] = [];
    let batch: string[] = [];
    for (const e of this.logFrom(sinceSeq)) {
      if (filter && !matchesEvent(filter, filterData(e))) continue;
      batch.push(e.json);
      if (batch.length === REPLAY_FRAME_EVENTS) {
        frames.push(eventsFrame(batch));
        batch = [];
      }
    }
    if (batch.length > 0) frames.push(eventsFrame(batch));
    return { ...base, frames };
  }

  /** Events after `seq` from the log, in order, their data as the text it was stored as. */
  private logFrom(seq: number): Outgoing[] {
    return this.sql
      .exec<{ seq: number; id: string; event: string; data: string; parts: number; ts: number }>("select seq, id, event, data, parts, ts from log where seq > ? order by seq", seq)
      .toArray()
      .map((row) => {
        const data =
          row.parts === 0
            ? row.data
            : row.data + this.sql.exec<{ chunk: string }>("select chunk from log_part where seq = ? order by part", row.seq).toArray().map((r) => r.chunk).join("");
        return { seq: row.seq, json: eventJson(row.seq, row.id, row.event, data, row.ts), data };
      });
  }

  /** A reset, and on a retaining channel the state that goes with it (the client reloads from it). */
  private resetFrames(reason: ResetReason, filter: RowFilter | null, snapshot: boolean): string[] {
    return [JSON.stringify({ type: "reset", reason, epoch: this.epoch, seq: this.seq } satisfies ServerFrame), ...this.snapshotFrames(filter, snapshot)];
  }

  /**
   * The retained rows (as the filter allows), if this channel retains any or the socket asked for
   * them (`snapshot=1`): a channel that has not received a retained row yet holds none, and says
   * so with an empty snapshot rather than nothing, so a client waiting for its state gets `[]`. A
   * row too large to retain is listed with its key, `row: null` and `oversized: true`; a filter
   * cannot judge it, so every filtered socket is told of it.
   */
  private snapshotFrames(filter: RowFilter | null, requested: boolean): string[] {
    if (!this.state.active && !requested) return [];
    if (this.state.overflowed) return [snapshotFrame(this.seq, [], true)];
    const rows = this.state.rows().filter((r) => !filter || r.row === null || matchesRowText(filter, r.row));
    return [snapshotFrame(this.seq, rows.map((r) => snapshotRowJson(r.schema, r.tbl, r.key, r.row, r.seq)))];
  }

  /** What an operator (or the benchmark) wants to know; served by `GET /channels/:name/stats`. */
  async stats(): Promise<ChannelStats> {
    const log = this.sql.exec<{ n: number; oldest: number | null }>("select count(*) as n, min(seq) as oldest from log").one();
    const lastPublish = this.meta.get("last_publish");
    const shards = this.shards();
    const shardSockets = await Promise.all(shards.map((s) => s.sockets()));
    shardSockets.forEach((n, i) => this.shardSockets.set(i, n));
    return {
      channel: this.name,
      epoch: this.epoch,
      seq: this.seq,
      sockets: this.ctx.getWebSockets().length + shardSockets.reduce((a, b) => a + b, 0),
      shards: shards.length,
      presence: this.allMembers().length,
      replayLogEvents: log.n,
      replayLogOldestSeq: log.oldest,
      lastPublishAt: lastPublish ? new Date(Number(lastPublish)).toISOString() : null,
      wakes: Number(this.meta.get("wakes") ?? 0),
      retained: this.state.size(),
      conflateMs: this.conflateMs,
      shardDeliveries: this.shardDeliveries,
    };
  }

  /** Drops log entries past the count or age bound (never one a conflation window has yet to send), and dedupe ids past both of theirs. */
  private trim(now: number): void {
    this.trimmedAt = this.seq;
    this.trimmedTime = now;
    const { replayMaxEvents, replayMaxAgeMs } = this.config;
    const undelivered = this.conflateMs === null ? this.seq : Number(this.meta.get("delivered_seq") ?? 0);
    // Rows are stored in seq order at the time of their publish, so the rows past an age bound
    // are a prefix of the log: each age bound below is "before the first row young enough",
    // found by walking seq upwards to that row. Every statement then touches only the rows it
    // deletes (plus one). Written as one condition on both columns ("seq <= ? or stored_at < ?"),
    // SQLite scanned the whole table on every trim: the log's 10,000 rows, and every id `seen`
    // holds for its 10 minutes (1.5 million at 2,500 events/s); it was a third of the Worker's
    // CPU under load. Should the clock step back, rows after the step wait for a later trim.
    this.sql.exec(
      `delete from log where seq <= min(max(?1, coalesce((select seq from log where stored_at >= ?2 order by seq limit 1), ?3 + 1) - 1), ?3)`,
      this.seq - replayMaxEvents,
      now - replayMaxAgeMs,
      undelivered,
    );
    this.sql.exec("delete from log_part where seq < coalesce((select min(seq) from log), ?)", this.seq + 1);
    // Ids are kept while either bound holds them: among the last DEDUPE_MIN_IDS (or the log's
    // size), or younger than DEDUPE_MIN_AGE_MS.
    this.sql.exec(
      `delete from seen where seq <= min(?1, coalesce((select seq from seen where at >= ?2 order by seq limit 1), ?1 + 1) - 1)`,
      this.seq - Math.max(replayMaxEvents, DEDUPE_MIN_IDS),
      now - DEDUPE_MIN_AGE_MS,
    );
  }

  private remember(channel: string): void {
    if (this.name === channel) return;
    this.name = channel;
    this.setMeta("name", channel);
  }
}

/** Shards of a channel per SHARDS (first matching pattern), or 0. */
export function shardCount(shards: { pattern: string; count: number }[], channel: string): number {
  return shards.find((s) => channelMatches(s.pattern, channel, null))?.count ?? 0;
}

/** The name of a channel's shard object `index`. */
export function shardName(channel: string, index: number): string {
  return `${channel}#shard${index}`;
}

/** Splits `text` into pieces of at most LOG_CHUNK_UNITS, never between the halves of a surrogate pair. */
function chunks(text: string): string[] {
  const out: string[] = [];
  for (let start = 0; start < text.length; ) {
    let end = Math.min(start + LOG_CHUNK_UNITS, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) end--;
    out.push(text.slice(start, end));
    start = end;
  }
  return out;
}

/** What one store() wrote: the new events, ready to send, and what it dropped or replaced. */
interface Stored {
  fresh: Outgoing[];
  duplicates: number;
  markers: number;
  /** Reset notices that started a new epoch (accepted, not events). */
  resets?: number;
}

/** An event on its way to a shard: its seq and its serialized JSON. */
type WireEvent = { seq: number; json: string };

/** A shard's deliveries: one in flight (busy), the next ones collecting publishes. */
interface ShardLane {
  busy: boolean;
  queue: { events: WireEvent[]; bytes: number; done: Promise<void>; resolve: () => void }[];
}

/** Shards a channel adds at most under AUTO_SHARD_SOCKETS (as many as SHARDS allows). */
const MAX_AUTO_SHARDS = 256;

/** A shard's upgrade response headers, without the ones meant for the root. */
function publicHeaders(headers: Headers): Headers {
  const out = new Headers(headers);
  out.delete(SHARD_SOCKETS_HEADER);
  return out;
}

/** Waits before each retry of a failed shard delivery, ms. */
const SHARD_RETRY_MS = [50, 250, 1000];

/** The most event JSON one coalesced shard delivery carries (an RPC argument may be 32 MiB). */
const SHARD_BATCH_BYTES = 4 * 1024 * 1024;
