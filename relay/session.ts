/**
 * One database session of the relay: two connections opened together and lost together. A lost
 * connection ends the whole session (the supervisor opens a new one), so the loops never run on
 * half a session.
 */
import pg from "pg";
import type { ResolvedRelayOptions } from "./config.ts";
import { SerialClient } from "./serial.ts";

/** Channel the capture triggers NOTIFY when the relay is idle (sql/realtime.sql, realtime.ring). */
export const DOORBELL_CHANNEL = "realtime_doorbell";

/**
 * What a wait is for (by convention the name of the loop that waits: "outbox", "notify", "prune",
 * "wal"); each can be woken on its own, so a doorbell never cuts a prune's pause short.
 */
export type WaitSlot = string;

/**
 * One connection attempt: a query connection (holds the leader lock, reads, writes the cursor)
 * and a listener connection (doorbell and forwarded NOTIFY channels).
 */
export class Session {
  /** The connection that holds the leader lock and reads and writes the outbox's state. */
  readonly query: SerialClient;
  /** The connection that LISTENs (doorbell, NOTIFY forwarding); prunes and metrics use it too. */
  readonly listener: SerialClient;
  leader = false;
  closed = false;
  /** Set by a doorbell; cleared by the outbox loop before each read. */
  rung = false;
  private readonly wakers = new Map<WaitSlot, () => void>();
  private failure: Error | null = null;
  private onNotification: ((channel: string, payload: string) => void) | null = null;
  private readonly closers: (() => Promise<unknown>)[] = [];

  constructor(options: Pick<ResolvedRelayOptions, "databaseUrl" | "name">) {
    const config = {
      connectionString: options.databaseUrl,
      application_name: `pg-edge-realtime relay ${options.name}`,
      keepAlive: true,
      // A connect that hangs (a server not answering) fails and is retried, instead of stalling the relay.
      connectionTimeoutMillis: 10_000,
    };
    this.query = new SerialClient(new pg.Client(config));
    this.listener = new SerialClient(new pg.Client(config));
    for (const { client } of [this.query, this.listener]) {
      // A dropped connection surfaces here (and as a failed query); it ends the session.
      client.on("error", (err) => this.lost(err));
      client.on("end", () => this.lost(new Error("database connection closed")));
    }
    this.listener.client.on("notification", (msg) => {
      if (msg.channel === DOORBELL_CHANNEL) {
        this.rung = true;
        this.wake();
      } else {
        this.onNotification?.(msg.channel, msg.payload ?? "");
      }
    });
  }

  async connect(): Promise<void> {
    await Promise.all([this.query.client.connect(), this.listener.client.connect()]);
    // The relay's own writes (cursor, doorbell, prunes) need not wait for a WAL flush: a cursor
    // lost in a crash only re-sends batches the channels drop as duplicates, and a lost doorbell
    // state is rewritten on the next loop. This takes an fsync off the delivery path.
    await Promise.all([this.query.query("set synchronous_commit = off"), this.listener.query("set synchronous_commit = off")]);
  }

  /** The installation's id (prefix of every outbox event id). */
  async installId(): Promise<string> {
    const { rows } = await this.query.query<{ install_id: string }>("select install_id from realtime.installation");
    if (!rows[0]) throw new Error("realtime schema is not installed: run `npx pg-edge-realtime install` (or psql -f sql/realtime.sql)");
    return rows[0].install_id;
  }

  async tryLock(name: string): Promise<boolean> {
    const { rows } = await this.query.query<{ locked: boolean }>("select pg_try_advisory_lock(hashtext('pg-edge-realtime'), hashtext($1)) as locked", [name]);
    this.leader = rows[0]!.locked;
    return this.leader;
  }

  /** LISTENs to the doorbell and `channels`; notifications on `channels` go to `onNotification`. */
  async listen(channels: readonly string[], onNotification: (channel: string, payload: string) => void): Promise<void> {
    this.onNotification = onNotification;
    for (const channel of [DOORBELL_CHANNEL, ...channels]) await this.listener.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
  }

  /**
   * Sleeps up to `ms` in `slot`; a wake of that slot, a stop or a lost connection ends it early.
   * Throws the connection's error if the session was lost.
   */
  async waitFor(ms: number, signal: AbortSignal, slot: WaitSlot = "outbox"): Promise<void> {
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.wakers.delete(slot);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
      this.wakers.set(slot, done);
      if (this.closed || this.failure || signal.aborted) done();
    });
    if (this.failure) throw this.failure;
  }

  /** Ends a wait in `slot` (a doorbell, a queued NOTIFY payload). */
  wake(slot: WaitSlot = "outbox"): void {
    this.wakers.get(slot)?.();
  }

  private lost(err: Error): void {
    if (this.closed || this.failure) return;
    this.failure = err;
    for (const wake of [...this.wakers.values()]) wake();
  }

  /** Runs `fn` when the session closes (the wal stream's connection). */
  onClose(fn: () => Promise<unknown>): void {
    this.closers.push(fn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const wake of [...this.wakers.values()]) wake();
    await Promise.allSettled(this.closers.map((fn) => fn()));
    // Ending the query connection releases the advisory lock: a standby takes over at once.
    await Promise.allSettled([this.query.client.end(), this.listener.client.end()]);
  }
}
