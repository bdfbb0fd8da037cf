/**
 * The relay's options as the library takes them (`new Relay(options)`), and the parsers of their
 * text forms. Each option's flag, variable, default, rules and --help line are in the table of
 * relay/options.ts, which also resolves and checks them.
 */
import type { LogLevel } from "./log.ts";
import type { Partition } from "./outbox.ts";

/** A NOTIFY channel to forward, and the realtime channel its payloads go to. */
export interface NotifyRoute {
  /** The Postgres NOTIFY channel to LISTEN on. */
  pgChannel: string;
  /** The realtime channel subscribers join. Default: the same name. */
  channel: string;
}

/** Where a relay reads captured changes, in --help's order: see {@link RelayOptions.source}. */
export const RELAY_SOURCES = ["outbox", "wal", "publication"] as const;

/** One of {@link RELAY_SOURCES}. */
export type RelaySource = (typeof RELAY_SOURCES)[number];

/** Options of {@link Relay}. Only the first three are required; relay/options.ts has every default. */
export interface RelayOptions {
  /** Postgres connection string. */
  databaseUrl: string;
  /** Base URL of the Worker; batches go to `<workerUrl>/ingest`. */
  workerUrl: string;
  /** Secret shared with the Worker (its `INGEST_SECRET`). */
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
   * outbox holds.
   */
  source?: RelaySource;
  /** Cursor and leader-lock name; relays with the same name share one cursor, one leads. */
  name?: string;
  /** Most events per POST: every hop costs per request, RPC and frame, not per event, hence a large default. */
  batchSize?: number;
  /** A batch stops growing once its events' data passes this many bytes. */
  batchBytes?: number;
  /** An event whose data is larger is sent as an `{oversized: true, ...}` marker instead. */
  maxEventBytes?: number;
  /** How often the outbox is read even without a doorbell, in ms. */
  pollIntervalMs?: number;
  /** Plain NOTIFY channels to forward (at-most-once, as NOTIFY itself). */
  notify?: NotifyRoute[];
  /** NOTIFY payloads held while the Worker is unreachable; past this the oldest are dropped. */
  notifyQueueMax?: number;
  /** Timeout of one POST, in ms. */
  requestTimeoutMs?: number;
  /** First retry delay, in ms (doubles per attempt, with jitter). */
  retryBaseMs?: number;
  /** Longest retry delay, in ms. */
  retryMaxMs?: number;
  /** How often a standby relay tries to take the lead, in ms. */
  standbyPollMs?: number;
  /** Delivered outbox rows older than this many seconds are deleted (0: as soon as delivered). */
  retentionSeconds?: number;
  /** How often delivered rows are pruned, in ms. */
  pruneIntervalMs?: number;
  /** Most rows one prune statement deletes (each is a short transaction). */
  pruneBatch?: number;
  /** Only this share of the channels (`{index, count}`, by channel hash); several relays ship in parallel. Default: all. */
  partition?: Partition | null;
  /**
   * With a slot source: every this many ms, a tiny logical message is written in this database
   * (`pg_logical_emit_message(false, 'realtime_heartbeat', '')`), so that the slot moves on even
   * when nothing here is written while other databases of the cluster write WAL (which the slot
   * would otherwise keep). 0: never.
   */
  heartbeatMs?: number;
  /** Log level. */
  logLevel?: LogLevel;
}

/** Options with every default filled in. */
export type ResolvedRelayOptions = Required<RelayOptions>;

/** The relay's configuration cannot work; the message says what to change. */
export class RelayConfigError extends Error {
  readonly code = "relay_config";
  override readonly name = "RelayConfigError";
}

/** Parses `data_changes,items_channel=items` (--notify) into routes. */
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

/** Parses `2/8` (index/count, --partition); `label` names the option in the error. */
export function parsePartition(spec: string, label: string): Partition {
  const m = /^(\d{1,3})\/(\d{1,3})$/.exec(spec.trim());
  if (!m) throw new RelayConfigError(`${label} must be <index>/<count>, e.g. 0/4, got ${JSON.stringify(spec)}`);
  return { index: Number(m[1]), count: Number(m[2]) };
}

/** Where the relay serves /healthz, /readyz and /metrics; null: nowhere. */
export interface HttpListen {
  host: string;
  port: number;
}

/** Parses `host:port` (or `off`, --http); `label` names the option in the error. */
export function parseHttp(value: string, label: string): HttpListen | null {
  if (value === "off") return null;
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new RelayConfigError(`${label} must be host:port or off, got ${JSON.stringify(value)}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}
