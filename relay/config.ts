/** The relay's options: every field documented with its default, resolved and checked in one place. */
import { CHANNEL_PATTERN } from "../protocol/index.ts";
import type { LogLevel } from "./log.ts";
import type { Partition } from "./outbox.ts";

/** A NOTIFY channel to forward, and the realtime channel its payloads go to. */
export interface NotifyRoute {
  /** The Postgres NOTIFY channel to LISTEN on. */
  pgChannel: string;
  /** The realtime channel subscribers join. Default: the same name. */
  channel: string;
}

/** Where a relay reads captured changes: see {@link RelayOptions.source}. */
export type RelaySource = "outbox" | "wal" | "publication";

/** Options of {@link Relay}. Only the first three are required. */
export interface RelayOptions {
  /** Postgres connection string. Env `DATABASE_URL`. Required. */
  databaseUrl: string;
  /** Base URL of the Worker; batches go to `<workerUrl>/ingest`. Env `WORKER_URL`. Required. */
  workerUrl: string;
  /** Secret shared with the Worker (its `INGEST_SECRET`), at least 16 characters. Env `INGEST_SECRET`. Required. */
  ingestSecret: string;
  /**
   * How changes are captured and read (the relay switches the database's capture to match):
   * - `"outbox"`: a trigger writes rows of realtime.outbox, the relay reads them (any wal_level);
   * - `"wal"`: a trigger writes logical decoding messages, the relay streams them over a
   *   replication slot (wal_level = logical, a role with REPLICATION; cheaper for writers);
   * - `"publication"`: no trigger at all; the watched tables are in the publication `realtime` and
   *   the relay decodes their own changes from the slot (wal_level = logical, REPLICATION; the
   *   cheapest for writers, and it captures every writer, COPY and manual fixes included).
   * A slot-reading relay creates its slot before switching capture, and still ships whatever the
   * outbox holds. Env `RELAY_SOURCE`. Default `"outbox"`.
   */
  source?: RelaySource;
  /** Cursor and leader-lock name; relays with the same name share one cursor, one leads. Default `"default"`. */
  name?: string;
  /** Most events per POST (1-1000). Default 1000: every hop costs per request, RPC and frame, not per event. */
  batchSize?: number;
  /** A batch stops growing once its events' data passes this many bytes. Default 1 MiB. */
  batchBytes?: number;
  /** An event whose data is larger is sent as an `{oversized: true, ...}` marker instead. Default 4 MiB. */
  maxEventBytes?: number;
  /** How often the outbox is read even without a doorbell, in ms. Default 1000. */
  pollIntervalMs?: number;
  /** Plain NOTIFY channels to forward (at-most-once, as NOTIFY itself). Default none. */
  notify?: NotifyRoute[];
  /** NOTIFY payloads held while the Worker is unreachable; past this the oldest are dropped. Default 10000. */
  notifyQueueMax?: number;
  /** Timeout of one POST, in ms. Default 30000. */
  requestTimeoutMs?: number;
  /** First retry delay, in ms (doubles per attempt, with jitter). Default 250. */
  retryBaseMs?: number;
  /** Longest retry delay, in ms. Default 30000. */
  retryMaxMs?: number;
  /** How often a standby relay tries to take the lead, in ms. Default 1000. */
  standbyPollMs?: number;
  /** Delivered outbox rows older than this many seconds are deleted (0: as soon as delivered). Default 3600. */
  retentionSeconds?: number;
  /** How often delivered rows are pruned, in ms. Default 10000. */
  pruneIntervalMs?: number;
  /** Most rows one prune statement deletes (each is a short transaction). Default 10000. */
  pruneBatch?: number;
  /** Only this share of the channels (`{index, count}`, by channel hash); several relays ship in parallel. Default: all. */
  partition?: Partition | null;
  /**
   * With a slot source: every this many ms, a tiny logical message is written in this database
   * (`pg_logical_emit_message(false, 'realtime_heartbeat', '')`), so that the slot moves on even
   * when nothing here is written while other databases of the cluster write WAL (which the slot
   * would otherwise keep). 0: never. Default 10000.
   */
  heartbeatMs?: number;
  /** Log level. Default `"info"`. */
  logLevel?: LogLevel;
}

/** Options with every default filled in. */
export type ResolvedRelayOptions = Required<RelayOptions>;

/** Defaults of every optional field. */
export const RELAY_DEFAULTS = {
  source: "outbox" as RelaySource,
  name: "default",
  batchSize: 1000,
  batchBytes: 1024 * 1024,
  maxEventBytes: 4 * 1024 * 1024,
  pollIntervalMs: 1000,
  notify: [] as NotifyRoute[],
  notifyQueueMax: 10_000,
  requestTimeoutMs: 30_000,
  retryBaseMs: 250,
  retryMaxMs: 30_000,
  standbyPollMs: 1000,
  retentionSeconds: 3600,
  pruneIntervalMs: 10_000,
  pruneBatch: 10_000,
  partition: null as Partition | null,
  heartbeatMs: 10_000,
  logLevel: "info" as LogLevel,
} satisfies Omit<ResolvedRelayOptions, "databaseUrl" | "workerUrl" | "ingestSecret">;

/** The relay's configuration cannot work; the message says what to change. */
export class RelayConfigError extends Error {
  readonly code = "relay_config";
  override readonly name = "RelayConfigError";
}

function intIn(name: string, value: number, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new RelayConfigError(`${name} must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}

/** Merges defaults and checks every field; throws {@link RelayConfigError}. */
export function resolveRelayOptions(options: RelayOptions): ResolvedRelayOptions {
  const o = { ...RELAY_DEFAULTS, ...stripUndefined(options) } as ResolvedRelayOptions;
  if (!o.databaseUrl) throw new RelayConfigError("DATABASE_URL is not set: pass --database-url postgres://user:password@host:5432/db or set DATABASE_URL");
  if (!/^postgres(ql)?:\/\//.test(o.databaseUrl)) {
    throw new RelayConfigError("DATABASE_URL must start with postgres:// or postgresql:// (for example postgres://user:password@host:5432/db)");
  }
  if (!o.workerUrl) throw new RelayConfigError("WORKER_URL is not set: pass --worker-url https://<your worker>.workers.dev or set WORKER_URL");
  let url: URL;
  try {
    url = new URL(o.workerUrl);
  } catch {
    throw new RelayConfigError(`WORKER_URL ${JSON.stringify(o.workerUrl)} is not a URL: use the Worker's base URL, for example https://pg-edge-realtime.example.workers.dev`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new RelayConfigError(`WORKER_URL must be http:// or https://, got ${url.protocol}`);
  }
  if (!o.ingestSecret) {
    throw new RelayConfigError("INGEST_SECRET is not set: set it to the same value as the Worker's secret (wrangler secret put INGEST_SECRET)");
  }
  if (o.ingestSecret.length < 16) throw new RelayConfigError("INGEST_SECRET must be at least 16 characters (try: openssl rand -hex 32)");
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(o.name)) throw new RelayConfigError(`--name must be 1-64 of A-Z a-z 0-9 _ . -, got ${JSON.stringify(o.name)}`);
  intIn("--batch-size", o.batchSize, 1, 1000);
  intIn("--batch-bytes", o.batchBytes, 1024, 16 * 1024 * 1024);
  intIn("--max-event-bytes", o.maxEventBytes, 1024, 16 * 1024 * 1024);
  intIn("--poll-interval", o.pollIntervalMs, 10, 3_600_000);
  intIn("--notify-queue-max", o.notifyQueueMax, 1, 1_000_000);
  intIn("--request-timeout", o.requestTimeoutMs, 100, 600_000);
  intIn("--retry-base", o.retryBaseMs, 1, 600_000);
  intIn("--retry-max", o.retryMaxMs, o.retryBaseMs, 3_600_000);
  intIn("--standby-poll", o.standbyPollMs, 10, 600_000);
  intIn("--retention", o.retentionSeconds, 0, 10 * 365 * 86_400);
  intIn("--prune-interval", o.pruneIntervalMs, 10, 86_400_000);
  intIn("--prune-batch", o.pruneBatch, 1, 1_000_000);
  if (o.heartbeatMs !== 0) intIn("--heartbeat", o.heartbeatMs, 100, 3_600_000);
  if (o.source !== "outbox" && o.source !== "wal" && o.source !== "publication") {
    throw new RelayConfigError(`--source must be outbox, wal or publication, got ${JSON.stringify(o.source)}`);
  }
  if (o.source !== "outbox" && o.partition) {
    throw new RelayConfigError(`--partition works with --source outbox only: a ${o.source} relay reads every channel from its replication slot (run one, or partition with the outbox source)`);
  }
  if (o.partition) {
    intIn("--partition count", o.partition.count, 1, 256);
    intIn("--partition index", o.partition.index, 0, o.partition.count - 1);
  }
  if (!["debug", "info", "warn", "error", "silent"].includes(o.logLevel)) {
    throw new RelayConfigError(`--log-level must be one of debug, info, warn, error, silent, got ${JSON.stringify(o.logLevel)}`);
  }
  for (const route of o.notify) {
    if (!/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(route.pgChannel)) {
      throw new RelayConfigError(`--notify: ${JSON.stringify(route.pgChannel)} is not a plain Postgres channel name (letters, digits, _; at most 63)`);
    }
    if (!CHANNEL_PATTERN.test(route.channel)) {
      throw new RelayConfigError(`--notify: ${JSON.stringify(route.channel)} is not a valid realtime channel (1-128 of A-Z a-z 0-9 _ . : @ -)`);
    }
    if (route.pgChannel === "realtime_doorbell") throw new RelayConfigError("--notify: realtime_doorbell is the relay's own doorbell and cannot be forwarded");
  }
  return o;
}

/** Parses `--notify data_changes,items_channel=items` into routes. */
export function parseNotifyRoutes(spec: string): NotifyRoute[] {
  return spec
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((entry) => {
      const eq = entry.indexOf("=");
      const pgChannel = eq < 0 ? entry : entry.slice(0, eq);
      return { pgChannel, channel: eq < 0 ? entry : entry.slice(eq + 1) };
    });
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Parses `--partition 2/8` (index/count). */
export function parsePartition(spec: string): Partition {
  const m = /^(\d{1,3})\/(\d{1,3})$/.exec(spec.trim());
  if (!m) throw new RelayConfigError(`--partition (RELAY_PARTITION) must be <index>/<count>, e.g. 0/4, got ${JSON.stringify(spec)}`);
  return { index: Number(m[1]), count: Number(m[2]) };
}
