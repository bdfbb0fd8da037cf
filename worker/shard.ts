/**
 * A shard of a sharded channel (SHARDS): it holds a share of the channel's sockets and nothing
 * else of its own. The root (worker/channel.ts) sequences and stores every event once and calls
 * each shard's `deliver` with every batch; a shard sends it to its sockets, one frame per filter.
 * A socket joining a shard is welcomed with what the root says it is owed (`sync`: replay, reset,
 * snapshot), so seq, epoch, resume, filters and presence are the channel's, whichever shard a
 * client lands on. Sockets that join while a sync call is under way go in the next one together.
 *
 * Order: batches from the root carry consecutive seqs; a shard that sees a gap (a failed delivery)
 * asks the root for the missing events before going on, and drops anything it already has. A
 * socket whose join is under way gets nothing live until its sync answer is in; then it is caught
 * up from the events the shard received meanwhile, and later batches skip what that answer
 * already covered.
 */
import type { PresenceMember } from "../protocol/index.ts";
import { eventsFrame, matchesEvent } from "../protocol/index.ts";
import type { Channel } from "./channel.ts";
import { Coalescer } from "./coalesce.ts";
import type { Env } from "./env.ts";
import {
  CHANNEL_NAME_HEADER,
  filterData,
  isUpgrade,
  member,
  type Outgoing,
  SHARD_HEADER,
  SHARD_SOCKETS_HEADER,
  type SocketAttachment,
  SocketHub,
  send,
  trySend,
} from "./hub.ts";
import { type Join, joinQuery, type SyncRequest, unpackJoins } from "./join.ts";
import { log } from "./log.ts";
import { MetaTable } from "./meta.ts";

/** Recent events kept in memory to catch up sockets whose join overlapped a delivery. */
const RECENT_EVENTS = 2000;
/** Joining sockets one sync call to the root carries at most. */
const SYNC_BATCH = 500;

export class ChannelShard extends SocketHub {
  private channel: string | null;
  private index: number;
  private epoch: string | null;
  private lastSeq: number;
  /** lastSeq is meaningful (a socket joined, or a batch was applied): gaps after it are filled. */
  private synced: boolean;
  private recent: Outgoing[] = [];
  /** Sockets whose sync answer is not in yet: they receive nothing live. */
  private readonly pending = new Set<WebSocket>();
  /** Sockets joined at seq N while this shard had seen less than N: they skip events up to N. */
  private readonly joinedAt = new Map<WebSocket, number>();
  /** Deliveries run one after another (a gap fill awaits the root). */
  private queue: Promise<void> = Promise.resolve();

  private readonly meta: MetaTable;
  /** Joins that arrive while a sync call is under way go to the root together, in the next one. */
  private readonly syncs = new Coalescer<SyncRequest, Join>(async (requests) => unpackJoins(await this.root().sync(this.channel!, requests)), SYNC_BATCH);

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.meta = new MetaTable(this.sql);
    this.channel = this.meta.get("channel") ?? null;
    this.index = this.meta.number("index");
    this.epoch = this.meta.get("epoch") ?? null;
    this.lastSeq = this.meta.number("last_seq");
    this.synced = this.meta.has("last_seq");
  }

  private setLastSeq(seq: number): void {
    this.lastSeq = seq;
    this.synced = true;
    this.meta.set("last_seq", seq);
  }

  private root(): DurableObjectStub<Channel> {
    return this.env.CHANNEL.get(this.env.CHANNEL.idFromName(this.channel!));
  }

  /** Accepts a socket, asks the root what it is owed, sends that, then catches it up. */
  override async fetch(request: Request): Promise<Response> {
    if (!isUpgrade(request)) return this.upgradeRequired();
    const channel = request.headers.get(CHANNEL_NAME_HEADER)!;
    if (this.channel !== channel) {
      this.channel = channel;
      this.meta.set("channel", channel);
    }
    this.index = Number(request.headers.get(SHARD_HEADER) ?? 0);
    this.meta.set("index", this.index);
    const accepted = await this.accept(request);
    if (accepted.refused) return accepted.response;
    const { server, me, filter } = accepted;
    const url = new URL(request.url);
    this.pending.add(server);
    try {
      const join = await this.syncs.request({ query: joinQuery(url), filterText: accepted.filterText });
      if (!this.welcome(server, me, join, { channel, epoch: this.epoch ?? "", seq: this.lastSeq }, this.index) || !join.ok) return accepted.response;
      // Events this shard received while the root answered, after the seq the answer ends at.
      const missed = this.recent.filter((e) => e.seq > join.seq && (!filter || matchesEvent(filter, filterData(e))));
      if (missed.length > 0) server.send(eventsFrame(missed.map((e) => e.json)));
      if (!this.synced) {
        // A shard's first socket: deliveries are owed from here on (checked for gaps from here).
        this.setLastSeq(join.seq);
      } else if (this.lastSeq < join.seq) {
        this.joinedAt.set(server, join.seq);
      }
    } catch (err) {
      log("warn", "shard could not sync a socket with its root", { error: String(err) });
      this.closeWith(server, me, "channel_unavailable", "the channel is unavailable; reconnect");
      return accepted.response;
    } finally {
      this.pending.delete(server);
    }
    if (me.presence) {
      const members = await this.root().presenceJoin(member(me), this.index);
      send(server, { type: "presence", members });
    }
    // The root placing sockets (AUTO_SHARD_SOCKETS) asks how many this shard now holds.
    if (request.headers.has(SHARD_SOCKETS_HEADER)) accepted.response.headers.set(SHARD_SOCKETS_HEADER, String(this.ctx.getWebSockets().length));
    return accepted.response;
  }

  /** A batch from the root: in seq order, gaps filled from the root, duplicates dropped. */
  deliver(channel: string, epoch: string, events: { seq: number; json: string }[]): Promise<void> {
    this.channel ??= channel;
    const run = this.queue.then(() => this.apply(epoch, events));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async apply(epoch: string, batch: { seq: number; json: string }[]): Promise<void> {
    if (this.epoch !== null && epoch !== this.epoch) {
      // The root's history was replaced: every client must resume (and be told to reset).
      for (const ws of this.ctx.getWebSockets()) ws.close(1012, "channel restarted");
      this.lastSeq = 0;
      this.synced = false;
      this.recent = [];
    }
    if (this.epoch !== epoch) {
      this.epoch = epoch;
      this.meta.set("epoch", epoch);
    }
    if (batch.length === 0) return;
    let events = batch;
    if (this.synced && batch[0]!.seq > this.lastSeq + 1) {
      const gap = await this.root().eventsAfter(this.lastSeq, batch[0]!.seq - 1);
      if (gap === null) {
        // Older than the root's log: the sockets resume from the root, which resets them.
        for (const ws of this.ctx.getWebSockets()) ws.close(1012, "missed events");
      } else {
        events = [...gap, ...batch];
      }
    }
    const fresh: Outgoing[] = events.filter((e) => e.seq > this.lastSeq).map((e) => ({ seq: e.seq, json: e.json }));
    if (fresh.length === 0) return;
    this.recent.push(...fresh);
    if (this.recent.length > RECENT_EVENTS) this.recent.splice(0, this.recent.length - RECENT_EVENTS);
    this.deliverLocal(fresh, (ws) => this.pending.has(ws) || this.joinedAt.has(ws));
    for (const [ws, seq] of this.joinedAt) {
      const filter = (ws.deserializeAttachment() as SocketAttachment).filter;
      const owed = fresh.filter((e) => e.seq > seq && (!filter || matchesEvent(filter, filterData(e))));
      if (owed.length > 0) trySend(ws, eventsFrame(owed.map((e) => e.json)));
      if (fresh.at(-1)!.seq >= seq) this.joinedAt.delete(ws);
    }
    this.setLastSeq(fresh.at(-1)!.seq);
  }

  /** A presence frame from the root, for this shard's presence members. */
  presence(frame: string): void {
    this.toLocalPresence(frame);
  }

  /** A client broadcast from elsewhere in the channel. */
  broadcast(frame: string): void {
    this.toAll(frame);
  }

  /** Open sockets on this shard. */
  sockets(): number {
    return this.ctx.getWebSockets().length;
  }

  protected override presenceChanged(_ws: WebSocket, me: SocketAttachment): void {
    void this.root().presenceUpdate(member(me) satisfies PresenceMember);
  }

  protected override memberLeft(_ws: WebSocket, me: SocketAttachment): void {
    if (this.channel) void this.root().presenceLeave(member(me));
  }

  protected override broadcastFrom(ws: WebSocket, _me: SocketAttachment, frame: string): void {
    this.toAll(frame, ws);
    void this.root().broadcastFromShard(frame, this.index);
  }
}
