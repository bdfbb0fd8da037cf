/**
 * The Channel Durable Object: one per channel, its root. It sequences events, keeps the replay
 * log, dedupe ids and retained rows in its SQLite, and sends each publish to its sockets (one frame
 * per filter). A sharded channel (SHARDS, AUTO_SHARD_SOCKETS) keeps its sockets on shard objects
 * instead (worker/shard.ts): the root still stores and sequences everything once, fans each
 * publish out to them, answers their joins (welcome, replay, snapshot) from its log, and keeps the
 * channel-wide presence list.
 *
 * The root orchestrates its parts, each in its own file:
 * - MetaTable (meta.ts): seq, epoch, name and counters;
 * - EventLog (event-log.ts): the replay log, dedupe ids, chunking and trimming;
 * - RetainedState (retained.ts): the latest version of each retained row, and snapshots of them;
 * - ShardFanout (shard-fanout.ts): shard placement and ordered, coalesced delivery to shards;
 * - ShardMembers (presence.ts): presence members on the shards' sockets;
 * - SocketHub (hub.ts): its own sockets, their limits, filters, presence and broadcasts.
 *
 * Hibernation-safe by construction: everything needed after a wake-up is in SQLite (seq, epoch,
 * log, state, filters, shard members) or in socket attachments and tags; the only timer is the
 * storage alarm of a conflating channel, and pings are answered by the runtime's auto-response.
 */
import type { ChangeText, ErrorCode, IngestEvent, IngestResult, PresenceMember, ResetReason, RowFilter, ServerFrame } from "../protocol/index.ts";
import {
  channelMatches,
  errorBody,
  eventJson,
  fillUnchanged,
  frameJson,
  markerJson,
  matchesEvent,
  parseFilter,
  readChange,
  rowKey,
  utf8Length,
} from "../protocol/index.ts";
import type { Env } from "./env.ts";
import { EventLog, type LoggedEvent } from "./event-log.ts";
import {
  CHANNEL_NAME_HEADER,
  filterData,
  isUpgrade,
  member,
  type Outgoing,
  SINCE_PATTERN,
  SINCE_RULE,
  type SocketAttachment,
  SocketHub,
  send,
  wantsEventStream,
} from "./hub.ts";
import { type Join, type JoinQuery, joinQuery, packJoins, replayFrames, SharedReplays, type SyncAnswer, type SyncRequest } from "./join.ts";
import { log } from "./log.ts";
import { MetaTable } from "./meta.ts";
import { ShardMembers } from "./presence.ts";
import { RetainedState } from "./retained.ts";
import { ShardFanout } from "./shard-fanout.ts";

export { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, SHARD_HEADER, USER_HEADER } from "./hub.ts";
export { type Join, type JoinQuery, joinQuery } from "./join.ts";
export { shardCount, shardName } from "./shard-fanout.ts";

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
  /** Replays built for resuming sockets, and replays shared with another socket resuming from the same point, since this object last woke. */
  replays: { built: number; shared: number };
  /** Sync calls from this channel's shards (each coalescing the sockets that joined meanwhile), and the sockets they carried, since this object last woke. */
  syncs: { calls: number; sockets: number };
}

/** What one store() wrote: the new events, ready to send, and what it dropped or replaced. */
interface Stored {
  fresh: Outgoing[];
  duplicates: number;
  markers: number;
  /** Reset notices that started a new epoch (accepted, not events). */
  resets: number;
}

/** Latest versions of the rows a batch changed, by row key (undefined: deleted). */
type BatchRows = Map<string, string | null | undefined>;

export class Channel extends SocketHub {
  private readonly meta: MetaTable;
  private readonly log: EventLog;
  private readonly state: RetainedState;
  private readonly members: ShardMembers;
  private readonly fanout: ShardFanout;
  private epoch: string;
  private seq: number;
  private name: string | null;
  private alarmPending = false;
  private readonly replays = new SharedReplays();
  /** Shards' sync calls, and the sockets they carried, since this object woke. */
  private readonly syncs = { calls: 0, sockets: 0 };

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.meta = new MetaTable(this.sql);
    this.log = new EventLog(this.sql, { maxEvents: this.config.replayMaxEvents, maxAgeMs: this.config.replayMaxAgeMs });
    this.members = new ShardMembers(this.sql);
    let epoch = this.meta.get("epoch");
    if (!epoch) {
      // A new epoch means a new history: a client holding seqs of another one must reset.
      epoch = crypto.randomUUID();
      this.meta.set("epoch", epoch);
      this.meta.set("seq", 0);
    }
    this.epoch = epoch;
    this.seq = this.meta.number("seq");
    this.name = this.meta.get("name") ?? null;
    // Counts constructions: each one is a wake-up (first use, or after hibernation/eviction).
    this.meta.set("wakes", this.meta.number("wakes") + 1);
    this.state = new RetainedState(this.sql, this.config.stateMaxRows, this.config.stateMaxBytes, this.meta);
    this.fanout = new ShardFanout({ env, config: this.config, meta: this.meta, channel: () => this.name, epoch: () => this.epoch });
  }

  /** The conflation window of this channel, or null (CONFLATE, by name pattern). */
  private get conflateMs(): number | null {
    const name = this.name;
    if (!name) return null;
    return this.config.conflate.find((c) => channelMatches(c.pattern, name, null))?.ms ?? null;
  }

  /** The log keeps every event after this seq whatever its bounds: a conflation window has yet to send them. */
  private get keepAfter(): number {
    return this.conflateMs === null ? this.seq : this.meta.number("delivered_seq");
  }

  /**
   * Stores new events (dropping ids already stored), assigns each a seq, updates retained rows,
   * and delivers them (or, conflating, at the end of the window). Storage is committed before the
   * events leave (output gates), so the Worker's 200 means durable and no socket sees an event
   * this object could lose. Event data is stored and sent as the JSON text it arrived as.
   *
   * No event can stop the others: should the batch fail to store as a whole, its events are
   * stored one by one (see storeEach). Only a failure of storage itself fails the publish, and the
   * relay retries it.
   */
  async publish(channel: string, events: IngestEvent[]): Promise<IngestResult> {
    this.remember(channel);
    let stored: Stored;
    try {
      stored = this.store(events);
    } catch (err) {
      log("warn", "a publish could not be stored as a whole; storing its events one by one", { channel: this.name, events: events.length, error: String(err) });
      stored = this.storeEach(events);
    }
    const { fresh, duplicates, markers, resets } = stored;
    if (resets > 0) {
      // Every socket and stream reconnects and is told (reset "lost", and the snapshot) as it joins again.
      for (const ws of this.ctx.getWebSockets()) ws.close(1012, "events were lost at the source: reconnect");
      this.streams.endAll();
      await this.fanout.newEpoch();
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
    const accepted = fresh.length + resets;
    return markers > 0 ? { accepted, duplicates, markers } : { accepted, duplicates };
  }

  /**
   * Stores `events` one by one. An event that fails alone twice (the first failure may be storage
   * blinking, not the event) is stored as an `unstorable` marker, logged with its source id. The
   * marker is not retained (the row's state may be what could not be stored); should even its key
   * be unstorable, a marker without it. Past that, storage itself is failing and this throws.
   */
  private storeEach(events: IngestEvent[]): Stored {
    const stored: Stored = { fresh: [], duplicates: 0, markers: 0, resets: 0 };
    for (const e of events) {
      let one: Stored | null;
      try {
        one = this.store([e]);
      } catch {
        one = null;
      }
      try {
        one ??= this.store([e]);
      } catch (error) {
        log("error", "event could not be stored; a marker takes its place", {
          channel: this.name,
          id: e.id,
          event: e.event,
          bytes: utf8Length(e.data),
          error: String(error),
        });
        const marker = { ...e, data: markerJson(e.data, "unstorable"), retain: false };
        try {
          one = this.store([marker]);
        } catch {
          one = this.store([{ ...marker, data: markerJson("null", "unstorable", utf8Length(e.data)) }]);
        }
        one.markers++;
        this.meta.set("unstorable", this.meta.number("unstorable") + 1);
      }
      for (const f of one.fresh) stored.fresh.push(f);
      stored.resets += one.resets;
      stored.duplicates += one.duplicates;
      stored.markers += one.markers;
    }
    return stored;
  }

  /**
   * One transaction: the new events of `events` in the log, their rows in the retained state.
   * Throws with nothing changed, in storage or in memory.
   */
  private store(events: IngestEvent[]): Stored {
    const fresh: Outgoing[] = [];
    const logged: LoggedEvent[] = [];
    const retained: { seq: number; change: ChangeText }[] = [];
    const latest: BatchRows = new Map();
    let resets = 0;
    let duplicates = 0;
    let markers = 0;
    const now = Date.now();
    const seqBefore = this.seq;
    const epochBefore = this.epoch;
    try {
      this.ctx.storage.transactionSync(() => {
        const known = this.log.known(events.map((e) => e.id));
        for (const e of events) {
          if (known.has(e.id)) {
            duplicates++;
            continue;
          }
          known.add(e.id); // a repeat inside this batch is a duplicate too
          if (e.reset) {
            // What this batch held before the notice belongs to the history that ends here.
            logged.length = 0;
            retained.length = 0;
            fresh.length = 0;
            latest.clear();
            this.startEpoch(e.id, now);
            resets++;
            continue;
          }
          const seq = ++this.seq;
          let data = e.data;
          if (e.retain) {
            const version = this.retainedVersion(e.id, data, latest);
            data = version.data;
            if (version.marker) markers++;
            if (version.change) retained.push({ seq, change: version.change });
          }
          logged.push({ seq, id: e.id, event: e.event, data, ts: e.ts });
          fresh.push({ seq, json: eventJson(seq, e.id, e.event, data, e.ts), data });
        }
        if (logged.length === 0) {
          if (resets > 0) this.meta.set("seq", this.seq);
          return;
        }
        this.log.append(logged, now);
        this.state.apply(retained);
        this.meta.set("seq", this.seq);
        this.meta.set("last_publish", now);
        this.log.maybeTrim(this.seq, now, this.keepAfter);
      });
    } catch (err) {
      // Storage rolled back; so does what this object holds in memory.
      this.seq = seqBefore;
      this.epoch = epochBefore;
      this.meta.reload();
      throw err;
    }
    return { fresh, duplicates, markers, resets };
  }

  /**
   * Events of this channel were lost at the source (a reset notice, id `id`): its history ends
   * here. A new epoch, with an empty log and no retained rows (the relay captures the retained
   * rows again); the ids stay known, so a re-sent batch is still dropped.
   */
  private startEpoch(id: string, now: number): void {
    this.log.clear();
    this.state.clear();
    this.meta.set("previous_epoch", this.epoch);
    this.meta.set("epoch_reason", "lost");
    this.epoch = crypto.randomUUID();
    this.meta.set("epoch", this.epoch);
    this.log.remember(id, this.seq, now);
    log("warn", "events were lost at the source: this channel starts a new epoch", { channel: this.name, id, epoch: this.epoch });
  }

  /**
   * A retained change event as it is stored: an update decoded from a publication carries no
   * value for a TOASTed column it did not change, and gets it here from the row this channel
   * retains (or from an earlier event of the batch, `latest`), so live sockets, replay and the
   * snapshot all get the whole row. A row larger than STATE_MAX_ROW_BYTES becomes a
   * `row_too_large` marker, so every client, live or joining later, sees the same thing for it.
   */
  private retainedVersion(id: string, data: string, latest: BatchRows): { data: string; change: ChangeText | null; marker: boolean } {
    let change = readChange(data);
    if (change?.unchanged && change.key !== null) {
      const k = rowKey(change.schema, change.table, change.key);
      const base = latest.has(k) ? latest.get(k) : this.state.active && !this.state.overflowed ? this.state.get(k) : undefined;
      const filled = base ? fillUnchanged(data, base) : null;
      if (filled !== null) {
        data = filled;
        change = readChange(data);
      }
    }
    let marker = false;
    if (change?.new != null && !change.marker && utf8Length(change.new) > this.config.stateMaxRowBytes) {
      log("warn", "row too large to retain; a marker takes its place", {
        channel: this.name,
        id,
        bytes: utf8Length(data),
        limit: this.config.stateMaxRowBytes,
      });
      data = markerJson(data, "row_too_large");
      change = { ...change, new: null, marker: true };
      marker = true;
    }
    if (change?.key != null) latest.set(rowKey(change.schema, change.table, change.key), change.op === "DELETE" ? undefined : change.new);
    return { data, change, marker };
  }

  /**
   * End of a conflation window: sends what arrived since the last delivery, keeping only the
   * latest event per row (key) among change events; other events all go out.
   */
  override async alarm(): Promise<void> {
    this.alarmPending = false;
    const from = this.meta.number("delivered_seq");
    if (from >= this.seq) return;
    const latest = new Map<string, Outgoing>();
    let anonymous = 0;
    for (const e of this.log.from(from)) {
      const change = readChange(e.data!);
      const id = change?.key != null ? rowKey(change.schema, change.table, change.key) : `#${anonymous++}`;
      latest.delete(id); // re-inserted: Map order follows the latest seq
      latest.set(id, e);
    }
    this.meta.set("delivered_seq", this.seq);
    await this.deliver([...latest.values()].sort((a, b) => a.seq - b.seq));
  }

  /** To this object's sockets, and to every shard (see ShardFanout.deliver). */
  private async deliver(events: Outgoing[]): Promise<void> {
    this.deliverLocal(events);
    await this.fanout.deliver(events);
  }

  /** Accepts a WebSocket or an event stream (forwarded by the Worker), greets it, and replays what it missed. */
  override async fetch(request: Request): Promise<Response> {
    if (wantsEventStream(request)) return this.openStream(request);
    if (!isUpgrade(request)) return this.upgradeRequired();
    const channel = request.headers.get(CHANNEL_NAME_HEADER);
    if (channel) this.remember(channel);
    if (this.fanout.placesSocket(this.ctx.getWebSockets().length)) return this.fanout.place(request);
    const accepted = await this.accept(request);
    if (accepted.refused) return accepted.response;
    const { server, me, filter } = accepted;
    // No await from here on: a publish cannot slip in between, so the socket sees welcome, then
    // snapshot or replay, then live events, with no gap and no overlap.
    const join = this.join(joinQuery(new URL(request.url)), filter, accepted.filterText);
    const joined = this.welcome(server, me, join, { channel: this.name ?? "", epoch: this.epoch, seq: this.seq });
    if (joined && me.presence) {
      send(server, { type: "presence", members: this.allMembers() });
      await this.presenceDiff({ type: "presence_diff", joins: [member(me)], leaves: [] }, server);
    }
    return accepted.response;
  }

  /**
   * An event stream (Server-Sent Events): the frames a WebSocket with the same query gets, one
   * message each. The last message of the join carries `id:` the seq it brings the client to, and
   * every live batch the seq of its last event, so a reconnecting EventSource resumes from its
   * Last-Event-ID (which wins over the URL's `since`). Without the URL's `epoch`, a Last-Event-ID is
   * taken as a seq of this epoch. Refusals are HTTP errors (a browser's EventSource reports them
   * as an error and stops).
   */
  private async openStream(request: Request): Promise<Response> {
    const channel = request.headers.get(CHANNEL_NAME_HEADER);
    if (channel) this.remember(channel);
    const admitted = await this.admit(request);
    if (!admitted.ok) return Response.json(errorBody(admitted.code, admitted.message), { status: admitted.code.startsWith("invalid") ? 400 : 429 });
    const url = new URL(request.url);
    const query = joinQuery(url);
    const lastEventId = request.headers.get("Last-Event-ID");
    if (lastEventId !== null && lastEventId !== "") {
      query.since = lastEventId;
      query.epoch ??= this.epoch;
    }
    // No await from here on: the join's frames are queued on the stream before any live batch.
    const join = this.join(query, admitted.filter, admitted.filterText);
    if (!join.ok) return Response.json(errorBody(join.code, join.message), { status: 400 });
    const { stream, response } = this.streams.start(admitted.user, admitted.filter);
    const frames = [frameJson({ type: "welcome", channel: join.channel, epoch: join.epoch, seq: join.seq }), ...join.frames];
    frames.forEach((frame, i) => {
      this.streams.send(stream, frame, i === frames.length - 1 ? join.seq : undefined);
    });
    return response;
  }

  /**
   * HTTP catch-up (`GET /channels/<channel>/events`): the events after `since`, at most `limit` of
   * those `filterText` passes, as the JSON text of a {@link CatchUp} (event data as stored: exact).
   */
  catchUp(
    channel: string,
    query: JoinQuery,
    filterText: string | null,
    limit: number,
  ): { ok: true; json: string } | { ok: false; code: ErrorCode; message: string } {
    this.remember(channel);
    const parsed = filterText ? parseFilter(filterText) : null;
    if (parsed && !parsed.ok) return { ok: false, code: "invalid_filter", message: parsed.message };
    const filter = parsed?.ok ? parsed.filter : null;
    const { since, epoch, snapshot } = query;
    const head = `{"channel":${JSON.stringify(this.name ?? channel)},"epoch":${JSON.stringify(this.epoch)},"seq":${this.seq}`;
    const position = (reset: ResetReason | null) => {
      const rows = this.state.snapshotFrames(this.seq, filter, snapshot);
      return `${head},"events":[],"next":${this.seq},"more":false${reset ? `,"reset":{"reason":"${reset}"}` : ""}${rows.length > 0 ? `,"snapshot":${rows[0]}` : ""}}`;
    };
    if (since === null || since === "") return { ok: true, json: position(null) };
    if (!SINCE_PATTERN.test(since)) return { ok: false, code: "invalid_query", message: SINCE_RULE };
    const sinceSeq = Number(since);
    if (epoch !== this.epoch || sinceSeq > this.seq) return { ok: true, json: position(this.resetReason(epoch)) };
    this.log.trim(this.seq, Date.now(), this.keepAfter);
    if (sinceSeq < this.seq && !this.log.covers(sinceSeq)) return { ok: true, json: position("gap") };
    const events: string[] = [];
    let next = sinceSeq;
    // Read in pages of `limit` until `limit` events pass the filter or the log ends.
    while (events.length < limit && next < this.seq) {
      const page = this.log.from(next, limit);
      if (page.length === 0) break;
      for (const e of page) {
        next = e.seq;
        if (!filter || matchesEvent(filter, filterData(e))) events.push(e.json);
        if (events.length === limit) break;
      }
    }
    return { ok: true, json: `${head},"events":[${events.join(",")}],"next":${next},"more":${next < this.seq}}` };
  }

  /**
   * A shard's joining sockets: what each is owed after `welcome` (replay, or reset and snapshot,
   * or the snapshot of a fresh subscriber), with its filter applied. One call, atomic: the seq
   * returned is the one those frames end at, and the shard sends live events after it. A shard
   * coalesces the joins that arrive while its last call is under way (a deploy's reconnects), so
   * the root answers them in one request, each shared replay built and sent once.
   */
  sync(channel: string, requests: SyncRequest[]): SyncAnswer {
    this.remember(channel);
    this.syncs.calls++;
    this.syncs.sockets += requests.length;
    // Fresh subscribers that ask the same (snapshot or not, filter) get one answer, built once and
    // sent once however many asked; resumes share their replays through SharedReplays.
    const fresh = new Map<string, Join>();
    return packJoins(
      requests.map(({ query, filterText }): Join => {
        const key = query.since === null || query.since === "" ? JSON.stringify([query.snapshot, filterText]) : null;
        let join = key === null ? undefined : fresh.get(key);
        if (!join) {
          const parsed = filterText ? parseFilter(filterText) : null;
          join =
            parsed && !parsed.ok
              ? { ok: false, code: "invalid_filter", message: parsed.message }
              : this.join(query, parsed?.ok ? parsed.filter : null, filterText);
          if (key !== null) fresh.set(key, join);
        }
        return join;
      }),
    );
  }

  /** Events after `after` up to `upTo`, for a shard that missed a batch; null if the log no longer has them. */
  eventsAfter(after: number, upTo: number): { seq: number; json: string }[] | null {
    if (!this.log.covers(after)) return null;
    return this.log
      .from(after)
      .filter((e) => e.seq <= upTo)
      .map((e) => ({ seq: e.seq, json: e.json }));
  }

  /** Presence of a shard's socket: registered here, announced everywhere; returns the full list. */
  async presenceJoin(m: PresenceMember, shard: number): Promise<PresenceMember[]> {
    this.members.join(m, shard);
    await this.presenceDiff({ type: "presence_diff", joins: [m], leaves: [] });
    return this.allMembers();
  }

  async presenceUpdate(m: PresenceMember): Promise<void> {
    this.members.update(m);
    await this.presenceDiff({ type: "presence_diff", joins: [m], leaves: [] });
  }

  async presenceLeave(m: PresenceMember): Promise<void> {
    this.members.leave(m);
    await this.presenceDiff({ type: "presence_diff", joins: [], leaves: [m] });
  }

  /** A client broadcast on shard `from` (which already sent it to its own sockets). */
  async broadcastFromShard(frame: string, from: number): Promise<void> {
    this.toAll(frame);
    await Promise.allSettled(this.fanout.stubs().map((s, i) => (i === from ? null : s.broadcast(frame))));
  }

  protected override presenceChanged(_ws: WebSocket, me: SocketAttachment): void {
    void this.presenceDiff({ type: "presence_diff", joins: [member(me)], leaves: [] });
  }

  protected override memberLeft(ws: WebSocket, me: SocketAttachment): void {
    void this.presenceDiff({ type: "presence_diff", joins: [], leaves: [member(me)] }, ws);
  }

  protected override broadcastFrom(ws: WebSocket, _me: SocketAttachment, frame: string): void {
    this.toAll(frame, ws);
    void Promise.allSettled(this.fanout.stubs().map((s) => s.broadcast(frame)));
  }

  /** Members on this object's sockets and on every shard's. */
  private allMembers(): PresenceMember[] {
    return [...this.localMembers(), ...this.members.list()];
  }

  /** A presence change, to this object's presence members (but `except`) and to every shard's. */
  private async presenceDiff(frame: Extract<ServerFrame, { type: "presence_diff" }>, except?: WebSocket): Promise<void> {
    const text = frameJson(frame);
    this.toLocalPresence(text, except);
    await Promise.allSettled(this.fanout.stubs().map((s) => s.presence(text)));
  }

  /** What a socket joining with `since`/`epoch` (or neither) is sent after its welcome. */
  private join({ since, epoch, snapshot }: JoinQuery, filter: RowFilter | null, filterText: string | null): Join {
    const base = { ok: true as const, channel: this.name ?? "", epoch: this.epoch, seq: this.seq };
    if (since === null || since === "") return { ...base, frames: this.state.snapshotFrames(this.seq, filter, snapshot) };
    if (!SINCE_PATTERN.test(since)) return { ok: false, code: "invalid_query", message: SINCE_RULE };
    const sinceSeq = Number(since);
    if (epoch !== this.epoch || sinceSeq > this.seq) return { ...base, frames: this.resetFrames(this.resetReason(epoch), filter, snapshot) };
    if (sinceSeq === this.seq) return { ...base, frames: [] };
    this.log.trim(this.seq, Date.now(), this.keepAfter);
    if (!this.log.covers(sinceSeq)) return { ...base, frames: this.resetFrames("gap", filter, snapshot) };
    const frames = this.replays.get(`${this.epoch}:${this.seq}`, sinceSeq, filterText ?? "", () => replayFrames(this.log.from(sinceSeq), filter));
    return { ...base, frames };
  }

  /** Why a client of `epoch` cannot resume here: the epoch a source loss ended is told so; any other epoch is just not this one. */
  private resetReason(epoch: string | null): ResetReason {
    return epoch !== null && epoch === this.meta.get("previous_epoch") && this.meta.get("epoch_reason") === "lost" ? "lost" : "epoch";
  }

  /** A reset, and on a retaining channel the state that goes with it (the client reloads from it). */
  private resetFrames(reason: ResetReason, filter: RowFilter | null, snapshot: boolean): string[] {
    return [frameJson({ type: "reset", reason, epoch: this.epoch, seq: this.seq }), ...this.state.snapshotFrames(this.seq, filter, snapshot)];
  }

  /** What an operator (or the benchmark) wants to know; served by `GET /channels/:name/stats`. */
  async stats(): Promise<ChannelStats> {
    const held = this.log.size();
    const lastPublish = this.meta.get("last_publish");
    const shardSockets = await this.fanout.sockets();
    return {
      channel: this.name,
      epoch: this.epoch,
      seq: this.seq,
      sockets: this.ctx.getWebSockets().length + shardSockets.reduce((a, b) => a + b, 0),
      shards: shardSockets.length,
      presence: this.allMembers().length,
      replayLogEvents: held.events,
      replayLogOldestSeq: held.oldest,
      lastPublishAt: lastPublish ? new Date(Number(lastPublish)).toISOString() : null,
      wakes: this.meta.number("wakes"),
      retained: this.state.size(),
      conflateMs: this.conflateMs,
      shardDeliveries: this.fanout.deliveries,
      replays: { built: this.replays.built, shared: this.replays.shared },
      syncs: { ...this.syncs },
    };
  }

  private remember(channel: string): void {
    if (this.name === channel) return;
    this.name = channel;
    this.meta.set("name", channel);
  }
}
