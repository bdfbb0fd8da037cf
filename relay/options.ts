/**
 * Every option of the relay, written once: its flag, its environment variable, its default (or
 * how to set it, when required), the rules its value must keep and its --help line. The defaults,
 * the checks of {@link resolveRelayOptions}, the command line's parser and its --help text
 * (relay/args.ts) come from this table, and a test (test/relay/config.test.ts) holds --help and
 * the README's table to it.
 */
import { CHANNEL_PATTERN } from "../protocol/index.ts";
import { type HttpListen, RELAY_SOURCES, RelayConfigError, type RelayOptions, type RelaySource, type ResolvedRelayOptions } from "./config.ts";
import { LOG_LEVELS, type LogLevel } from "./log.ts";
import { between, intIn, listen, notifyRoutes, type OptionSpec, onOff, orList, partition, text, wholeNumber, word, zeroOr } from "./option-kinds.ts";
import { DOORBELL_CHANNEL } from "./session.ts";

export type { OptionSpec } from "./option-kinds.ts";

/** What the command line reads besides the relay's options. */
export interface CliOnlySettings {
  /** Where /healthz, /readyz and /metrics are served; null: nowhere. */
  http: HttpListen | null;
  /** Install (or upgrade) the schema before relaying. */
  install: boolean;
}

type RelaySpecs = { readonly [K in keyof ResolvedRelayOptions]: OptionSpec<ResolvedRelayOptions[K]> };
type CliSpecs = { readonly [K in keyof CliOnlySettings]: OptionSpec<CliOnlySettings[K]> };

/** The Worker takes at most this many events per ingest (its MAX_BATCH_EVENTS default). */
const BATCH_SIZE = { min: 1, max: 1000 };

/** The relay's options, in --help's order. */
export const RELAY_OPTIONS = {
  databaseUrl: {
    flag: "database-url",
    env: "DATABASE_URL",
    help: "Postgres connection string",
    required: "pass --database-url postgres://user:password@host:5432/db or set DATABASE_URL",
    kind: text,
    check(url, _o, { env }) {
      if (!/^postgres(ql)?:\/\//.test(url))
        throw new RelayConfigError(`${env} must start with postgres:// or postgresql:// (for example postgres://user:password@host:5432/db)`);
    },
  },
  workerUrl: {
    flag: "worker-url",
    env: "WORKER_URL",
    help: "the Worker's base URL, e.g. https://x.workers.dev",
    required: "pass --worker-url https://<your worker>.workers.dev or set WORKER_URL",
    kind: text,
    check(value, _o, { env }) {
      let url: URL;
      try {
        url = new URL(value);
      } catch {
        throw new RelayConfigError(
          `${env} ${JSON.stringify(value)} is not a URL: use the Worker's base URL, for example https://pg-edge-realtime.example.workers.dev`,
        );
      }
      if (url.protocol !== "https:" && url.protocol !== "http:") throw new RelayConfigError(`${env} must be http:// or https://, got ${url.protocol}`);
    },
  },
  ingestSecret: {
    flag: "ingest-secret",
    env: "INGEST_SECRET",
    help: "secret shared with the Worker; prefer the variable",
    required: "set it to the same value as the Worker's secret (wrangler secret put INGEST_SECRET)",
    kind: text,
    check(secret, _o, { env }) {
      if (secret.length < 16) throw new RelayConfigError(`${env} must be at least 16 characters (try: openssl rand -hex 32)`);
    },
  },
  source: {
    flag: "source",
    env: "RELAY_SOURCE",
    help: `${orList(RELAY_SOURCES)} (both need wal_level = logical; cheaper for writers)`,
    default: "outbox",
    kind: word<RelaySource>(),
    check(source, _o, { flag }) {
      if (!RELAY_SOURCES.includes(source)) throw new RelayConfigError(`${flag} must be ${orList(RELAY_SOURCES)}, got ${JSON.stringify(source)}`);
    },
  },
  name: {
    flag: "name",
    env: "RELAY_NAME",
    help: "cursor and leader-lock name",
    default: "default",
    kind: text,
    check(name, _o, { flag }) {
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new RelayConfigError(`${flag} must be 1-64 of A-Z a-z 0-9 _ . -, got ${JSON.stringify(name)}`);
    },
  },
  batchSize: {
    flag: "batch-size",
    env: "RELAY_BATCH_SIZE",
    help: `most events per POST (${BATCH_SIZE.min}-${BATCH_SIZE.max})`,
    default: 1000,
    kind: wholeNumber,
    check: between(BATCH_SIZE.min, BATCH_SIZE.max),
  },
  batchBytes: {
    flag: "batch-bytes",
    env: "RELAY_BATCH_BYTES",
    help: "a batch stops growing past this many bytes of data",
    default: 1024 * 1024,
    kind: wholeNumber,
    check: between(1024, 16 * 1024 * 1024),
  },
  maxEventBytes: {
    flag: "max-event-bytes",
    env: "RELAY_MAX_EVENT_BYTES",
    help: "larger events are sent as {oversized: true} markers",
    default: 4 * 1024 * 1024,
    kind: wholeNumber,
    check: between(1024, 16 * 1024 * 1024),
  },
  pollIntervalMs: {
    flag: "poll-interval",
    env: "RELAY_POLL_INTERVAL_MS",
    help: "ms between outbox reads without a doorbell",
    default: 1000,
    kind: wholeNumber,
    check: between(10, 3_600_000),
  },
  notify: {
    flag: "notify",
    env: "RELAY_NOTIFY",
    help: "NOTIFY channels to forward: data_changes,items=items-live",
    default: [],
    kind: notifyRoutes,
    check(routes, _o, { flag }) {
      for (const route of routes) {
        if (!/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(route.pgChannel)) {
          throw new RelayConfigError(`${flag}: ${JSON.stringify(route.pgChannel)} is not a plain Postgres channel name (letters, digits, _; at most 63)`);
        }
        if (!CHANNEL_PATTERN.test(route.channel)) {
          throw new RelayConfigError(`${flag}: ${JSON.stringify(route.channel)} is not a valid realtime channel (1-128 of A-Z a-z 0-9 _ . : @ -)`);
        }
        if (route.pgChannel === DOORBELL_CHANNEL)
          throw new RelayConfigError(`${flag}: ${DOORBELL_CHANNEL} is the relay's own doorbell and cannot be forwarded`);
      }
    },
  },
  notifyQueueMax: {
    flag: "notify-queue-max",
    env: "RELAY_NOTIFY_QUEUE_MAX",
    help: "NOTIFY payloads held while the Worker is down",
    default: 10_000,
    kind: wholeNumber,
    check: between(1, 1_000_000),
  },
  requestTimeoutMs: {
    flag: "request-timeout",
    env: "RELAY_REQUEST_TIMEOUT_MS",
    help: "ms before a POST is abandoned and retried",
    default: 30_000,
    kind: wholeNumber,
    check: between(100, 600_000),
  },
  retryBaseMs: {
    flag: "retry-base",
    env: "RELAY_RETRY_BASE_MS",
    help: "first retry delay in ms (doubles, with jitter)",
    default: 250,
    kind: wholeNumber,
    check: between(1, 600_000),
  },
  retryMaxMs: {
    flag: "retry-max",
    env: "RELAY_RETRY_MAX_MS",
    help: "longest retry delay in ms",
    default: 30_000,
    kind: wholeNumber,
    check: between((o) => o.retryBaseMs, 3_600_000),
  },
  standbyPollMs: {
    flag: "standby-poll",
    env: "RELAY_STANDBY_POLL_MS",
    help: "ms between a standby's attempts to take the lead",
    default: 1000,
    kind: wholeNumber,
    check: between(10, 600_000),
  },
  retentionSeconds: {
    flag: "retention",
    env: "RELAY_RETENTION_SECONDS",
    help: "delivered outbox rows are kept this many seconds",
    default: 3600,
    kind: wholeNumber,
    check: between(0, 10 * 365 * 86_400),
  },
  pruneIntervalMs: {
    flag: "prune-interval",
    env: "RELAY_PRUNE_INTERVAL_MS",
    help: "ms between prunes of delivered rows",
    default: 10_000,
    kind: wholeNumber,
    check: between(10, 86_400_000),
  },
  pruneBatch: {
    flag: "prune-batch",
    env: "RELAY_PRUNE_BATCH",
    help: "most rows deleted per prune statement",
    default: 10_000,
    kind: wholeNumber,
    check: between(1, 1_000_000),
  },
  partition: {
    flag: "partition",
    env: "RELAY_PARTITION",
    help: "ship only channels whose hash % count = index: 0/4 (one relay per partition)",
    default: null,
    kind: partition,
    check(p, o, { flag }) {
      if (!p) return;
      if (o.source !== "outbox") {
        throw new RelayConfigError(
          `${flag} works with --source outbox only: a ${o.source} relay reads every channel from its replication slot (run one, or partition with the outbox source)`,
        );
      }
      intIn(`${flag} count`, p.count, 1, 256);
      intIn(`${flag} index`, p.index, 0, p.count - 1);
    },
  },
  heartbeatMs: {
    flag: "heartbeat",
    env: "RELAY_HEARTBEAT_MS",
    help: "slot sources: ms between heartbeat messages that keep the slot moving (0: none)",
    default: 10_000,
    kind: wholeNumber,
    check: zeroOr(between(100, 3_600_000)),
  },
  logLevel: {
    flag: "log-level",
    env: "LOG_LEVEL",
    help: orList(LOG_LEVELS),
    default: "info",
    kind: word<LogLevel>(),
    check(level, _o, { flag }) {
      if (!LOG_LEVELS.includes(level)) throw new RelayConfigError(`${flag} must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(level)}`);
    },
  },
} satisfies RelaySpecs;

/** The command line's own options, after the relay's in --help. */
export const CLI_OPTIONS = {
  http: { flag: "http", env: "RELAY_HTTP", help: "/healthz, /readyz, /metrics on host:port, or off", default: { host: "127.0.0.1", port: 9187 }, kind: listen },
  install: { flag: "install", env: "RELAY_INSTALL", help: "install the schema before relaying (the variable: 1 or true)", default: false, kind: onOff },
} satisfies CliSpecs;

/** Everything the command line reads: the relay's options, then its own. */
export type Settings = ResolvedRelayOptions & CliOnlySettings;

/** Every option the command line reads, in --help's order. */
export const OPTIONS: { readonly [K in keyof Settings]: OptionSpec<Settings[K]> } = { ...RELAY_OPTIONS, ...CLI_OPTIONS };

/** Every option's key, in the table's order. */
export function optionKeys<T extends object>(table: T): (keyof T & string)[] {
  return Object.keys(table) as (keyof T & string)[];
}

/** The options without a default. */
type Required = { [K in keyof typeof RELAY_OPTIONS]: (typeof RELAY_OPTIONS)[K] extends { required: string } ? K : never }[keyof typeof RELAY_OPTIONS];

/** Defaults of every optional field. */
export const RELAY_DEFAULTS = Object.fromEntries(
  optionKeys(RELAY_OPTIONS).flatMap((k) => {
    const spec: { required?: string; default?: unknown } = RELAY_OPTIONS[k];
    return spec.required === undefined ? [[k, spec.default]] : [];
  }),
) as Omit<ResolvedRelayOptions, Required>;

/** `value` of the required option `key`, or the error that says how to set it. */
export function requireOption(key: Required, value: string | undefined): string {
  if (!value) throw new RelayConfigError(notSet(RELAY_OPTIONS[key]));
  return value;
}

function notSet(spec: { env: string; required: string }): string {
  return `${spec.env} is not set: ${spec.required}`;
}

/** Merges defaults and checks every field, in the table's order; throws {@link RelayConfigError}. */
export function resolveRelayOptions(options: Partial<RelayOptions>): ResolvedRelayOptions {
  const o = { ...RELAY_DEFAULTS, ...stripUndefined(options) } as ResolvedRelayOptions;
  for (const key of optionKeys(RELAY_OPTIONS)) check(key, o);
  return o;
}

function check<K extends keyof ResolvedRelayOptions>(key: K, o: ResolvedRelayOptions): void {
  const specs: RelaySpecs = RELAY_OPTIONS;
  const spec: OptionSpec<ResolvedRelayOptions[K]> = specs[key];
  if (spec.required !== undefined && !o[key]) throw new RelayConfigError(notSet(spec));
  spec.check?.(o[key], o, { flag: `--${spec.flag}`, env: spec.env });
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
