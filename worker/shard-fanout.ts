/**
 * A channel root's side of sharding: which shard objects hold its sockets (SHARDS by name pattern,
 * or added under AUTO_SHARD_SOCKETS), placing a new socket on one, and delivering every batch to
 * each of them in order, one RPC in flight per shard with later publishes coalesced behind it.
 *
 *   publish ──> lane 0: [in flight] <- [collecting ≤ SHARD_BATCH_BYTES] <- ...  ──> shard #0
 *           └─> lane 1: [in flight] <- [collecting]                             ──> shard #1
 */
import { channelMatches } from "../protocol/index.ts";
import type { WorkerConfig } from "./config.ts";
import type { Env } from "./env.ts";
import { type Outgoing, SHARD_HEADER, SHARD_SOCKETS_HEADER } from "./hub.ts";
import { log } from "./log.ts";
import type { MetaTable } from "./meta.ts";
import type { ChannelShard } from "./shard.ts";

/** Shards a channel adds at most under AUTO_SHARD_SOCKETS (as many as SHARDS allows). */
export const MAX_AUTO_SHARDS = 256;

/** Waits before each retry of a failed shard delivery, ms. */
const SHARD_RETRY_MS = [50, 250, 1000];

/** The most event JSON one coalesced shard delivery carries (an RPC argument may be 32 MiB). */
const SHARD_BATCH_BYTES = 4 * 1024 * 1024;

/** Shards of a channel per SHARDS (first matching pattern), or 0. */
export function shardCount(shards: { pattern: string; count: number }[], channel: string): number {
  return shards.find((s) => channelMatches(s.pattern, channel, null))?.count ?? 0;
}

/** The name of a channel's shard object `index`. */
export function shardName(channel: string, index: number): string {
  return `${channel}#shard${index}`;
}

/** An event on its way to a shard: its seq and its serialized JSON. */
export type WireEvent = { seq: number; json: string };

/** A shard's deliveries: one in flight (busy), the next ones collecting publishes. */
interface ShardLane {
  busy: boolean;
  queue: { events: WireEvent[]; bytes: number; done: Promise<void>; resolve: () => void }[];
}

/** What the fan-out reads of its channel: its name and epoch as they are now. */
export interface FanoutHost {
  readonly env: Env;
  readonly config: WorkerConfig;
  readonly meta: MetaTable;
  channel(): string | null;
  epoch(): string;
}

export class ShardFanout {
  /** Each shard's lane (in memory). */
  private readonly lanes = new Map<number, ShardLane>();
  /** Sockets each automatic shard last reported (in memory; a woken root learns them again). */
  private readonly reported = new Map<number, number>();
  /** Deliveries (RPCs) sent to shards since this object last woke. */
  deliveries = 0;

  constructor(private readonly host: FanoutHost) {}

  /** How many shards hold this channel's sockets: SHARDS by name pattern, else those added automatically. */
  count(): number {
    const name = this.host.channel();
    if (!name) return 0;
    return shardCount(this.host.config.shards, name) || this.host.meta.number("auto_shards");
  }

  /** The shards holding this channel's sockets; empty when unsharded. */
  stubs(): DurableObjectStub<ChannelShard>[] {
    return Array.from({ length: this.count() }, (_, i) => this.stub(i));
  }

  /** Sockets on each shard (asked, and remembered for placement). */
  async sockets(): Promise<number[]> {
    const counts = await Promise.all(this.stubs().map((s) => s.sockets()));
    counts.forEach((n, i) => {
      this.reported.set(i, n);
    });
    return counts;
  }

  /** True when a socket joining a root already holding `held` of them goes to a shard instead. */
  placesSocket(held: number): boolean {
    const limit = this.host.config.autoShardSockets;
    const name = this.host.channel();
    return limit > 0 && name !== null && shardCount(this.host.config.shards, name) === 0 && held >= limit;
  }

  /**
   * AUTO_SHARD_SOCKETS: the socket goes to the shard with the fewest sockets (as each last
   * reported); when even that one is full, the channel adds a shard (persisted: a channel never
   * loses a shard, and deliveries reach every shard from the moment it is added, before its first
   * socket asks the root what it is owed).
   */
  async place(request: Request): Promise<Response> {
    const limit = this.host.config.autoShardSockets;
    let active = this.host.meta.number("auto_shards");
    let pick = -1;
    let least = Infinity;
    for (let i = 0; i < active; i++) {
      const n = this.reported.get(i) ?? 0;
      if (n < least) [pick, least] = [i, n];
    }
    if (pick < 0 || (least >= limit && active < MAX_AUTO_SHARDS)) {
      pick = active++;
      this.host.meta.set("auto_shards", active);
      log("info", "channel added a shard", { channel: this.host.channel(), shards: active, socketsPerObject: limit });
    }
    this.reported.set(pick, (this.reported.get(pick) ?? 0) + 1);
    const headers = new Headers(request.headers);
    headers.set(SHARD_HEADER, String(pick));
    headers.set(SHARD_SOCKETS_HEADER, "?");
    const res = await this.stub(pick).fetch(new Request(request.url, { headers }));
    const reported = Number(res.headers.get(SHARD_SOCKETS_HEADER) ?? Number.NaN);
    if (Number.isFinite(reported)) this.reported.set(pick, reported);
    const out = new Headers(res.headers);
    out.delete(SHARD_SOCKETS_HEADER);
    return new Response(res.body, { status: res.status, webSocket: res.webSocket, headers: out });
  }

  /**
   * To every shard, one RPC each. The publish does not wait for the shards (its events are stored:
   * a shard that misses them fills the gap from the log), so a hot sharded channel does not hold
   * up the relay's batch, and with it every other channel of the batch; it waits only when a shard
   * is falling behind (more queued than one coalesced delivery), which slows the relay down
   * instead of letting the queue grow.
   */
  async deliver(events: readonly Outgoing[]): Promise<void> {
    const count = this.count();
    if (count === 0 || events.length === 0) return;
    const wire = events.map((e) => ({ seq: e.seq, json: e.json }));
    const bytes = wire.reduce((n, e) => n + e.json.length, 0);
    const sent = Array.from({ length: count }, (_, i) => this.toShard(i, wire, bytes));
    if ([...this.lanes.values()].some((lane) => lane.queue.length > 1)) await Promise.all(sent);
  }

  /** Tells every shard of a new epoch (its sockets reconnect and are reset as they join again). */
  async newEpoch(): Promise<void> {
    const name = this.host.channel();
    if (!name) return;
    await Promise.allSettled(this.stubs().map((s) => s.deliver(name, this.host.epoch(), [])));
  }

  private stub(i: number): DurableObjectStub<ChannelShard> {
    const { SHARD } = this.host.env;
    return SHARD.get(SHARD.idFromName(shardName(this.host.channel()!, i)));
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
    void this.send(i, batch.events).finally(() => {
      batch.resolve();
      this.pump(i, lane);
    });
  }

  /**
   * One delivery, retried a few times (a shard drops seqs it already has, so a retry is safe);
   * past that, the shard fills the gap from the log with its next delivery.
   */
  private async send(i: number, events: WireEvent[]): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.deliveries++;
      try {
        await this.stub(i).deliver(this.host.channel()!, this.host.epoch(), events);
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
}
