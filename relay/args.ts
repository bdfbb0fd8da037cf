/** Command-line and environment parsing for the relay CLI. */
import { parseArgs } from "node:util";
import { parseNotifyRoutes, parsePartition, RelayConfigError, RELAY_DEFAULTS, type RelayOptions } from "./config.ts";

interface OptionSpec {
  flag: string;
  env: string;
  key: keyof RelayOptions;
  kind: "string" | "int" | "notify" | "partition";
  doc: string;
}

/** Every option: its flag, its variable, and its --help line (defaults come from RELAY_DEFAULTS). */
export const OPTION_SPECS: OptionSpec[] = [
  { flag: "database-url", env: "DATABASE_URL", key: "databaseUrl", kind: "string", doc: "Postgres connection string (required)" },
  { flag: "worker-url", env: "WORKER_URL", key: "workerUrl", kind: "string", doc: "the Worker's base URL, e.g. https://x.workers.dev (required)" },
  { flag: "ingest-secret", env: "INGEST_SECRET", key: "ingestSecret", kind: "string", doc: "secret shared with the Worker; prefer the variable (required)" },
  { flag: "source", env: "RELAY_SOURCE", key: "source", kind: "string", doc: "outbox, wal or publication (both need wal_level = logical; cheaper for writers)" },
  { flag: "name", env: "RELAY_NAME", key: "name", kind: "string", doc: "cursor and leader-lock name" },
  { flag: "batch-size", env: "RELAY_BATCH_SIZE", key: "batchSize", kind: "int", doc: "most events per POST (1-1000)" },
  { flag: "batch-bytes", env: "RELAY_BATCH_BYTES", key: "batchBytes", kind: "int", doc: "a batch stops growing past this many bytes of data" },
  { flag: "max-event-bytes", env: "RELAY_MAX_EVENT_BYTES", key: "maxEventBytes", kind: "int", doc: "larger events are sent as {oversized: true} markers" },
  { flag: "poll-interval", env: "RELAY_POLL_INTERVAL_MS", key: "pollIntervalMs", kind: "int", doc: "ms between outbox reads without a doorbell" },
  { flag: "notify", env: "RELAY_NOTIFY", key: "notify", kind: "notify", doc: "NOTIFY channels to forward: data_changes,items=items-live" },
  { flag: "notify-queue-max", env: "RELAY_NOTIFY_QUEUE_MAX", key: "notifyQueueMax", kind: "int", doc: "NOTIFY payloads held while the Worker is down" },
  { flag: "request-timeout", env: "RELAY_REQUEST_TIMEOUT_MS", key: "requestTimeoutMs", kind: "int", doc: "ms before a POST is abandoned and retried" },
  { flag: "retry-base", env: "RELAY_RETRY_BASE_MS", key: "retryBaseMs", kind: "int", doc: "first retry delay in ms (doubles, with jitter)" },
  { flag: "retry-max", env: "RELAY_RETRY_MAX_MS", key: "retryMaxMs", kind: "int", doc: "longest retry delay in ms" },
  { flag: "standby-poll", env: "RELAY_STANDBY_POLL_MS", key: "standbyPollMs", kind: "int", doc: "ms between a standby's attempts to take the lead" },
  { flag: "retention", env: "RELAY_RETENTION_SECONDS", key: "retentionSeconds", kind: "int", doc: "delivered outbox rows are kept this many seconds" },
  { flag: "prune-interval", env: "RELAY_PRUNE_INTERVAL_MS", key: "pruneIntervalMs", kind: "int", doc: "ms between prunes of delivered rows" },
  { flag: "prune-batch", env: "RELAY_PRUNE_BATCH", key: "pruneBatch", kind: "int", doc: "most rows deleted per prune statement" },
  { flag: "partition", env: "RELAY_PARTITION", key: "partition", kind: "partition", doc: "ship only channels whose hash % count = index: 0/4 (one relay per partition)" },
  { flag: "heartbeat", env: "RELAY_HEARTBEAT_MS", key: "heartbeatMs", kind: "int", doc: "slot sources: ms between heartbeat messages that keep the slot moving (0: none)" },
  { flag: "log-level", env: "LOG_LEVEL", key: "logLevel", kind: "string", doc: "debug, info, warn, error or silent" },
];

/** The --help text. */
export const USAGE = `Usage: pg-edge-realtime <command> [options]

Commands:
  relay      read the outbox or the WAL (and NOTIFY channels) and POST signed batches to the Worker
  install    install or upgrade the realtime schema (idempotent; same as psql -f sql/realtime.sql)
  token      print a browser token: token --sub <user> --channels todos,tenant:42 [--ttl 3600]
             (HS256 with JWT_SECRET, the Worker's secret)
  backfill   backfill <schema.table>: write a watched table's current rows to the outbox, in
             pages of 1000, with progress (realtime.backfill_page)
  init       init [dir]: add realtime to the Worker project in dir (default: here): the Durable
             Object bindings and migration in wrangler.toml (appended, never overwritten), and
             for a new project wrangler.toml, src/index.ts and .dev.vars.example

Options (each also read from the environment variable shown; the flag wins):
${OPTION_SPECS.map((s) => {
  const def = (RELAY_DEFAULTS as Record<string, unknown>)[s.key];
  const shown = def === undefined ? "" : ` [default: ${Array.isArray(def) || def === null ? "none" : String(def)}]`;
  return `  --${s.flag.padEnd(18)} ${s.env.padEnd(25)} ${s.doc}${shown}`;
}).join("\n")}
  --http              RELAY_HTTP                /healthz, /readyz, /metrics on host:port, or off [default: 127.0.0.1:9187]
  --install                                       install the schema before relaying
  -h, --help                                      show this help
`;

/** Where the relay serves /healthz, /readyz and /metrics; null: nowhere. */
export interface HttpListen {
  host: string;
  port: number;
}

/** Default of --http. */
export const DEFAULT_HTTP = "127.0.0.1:9187";

/** Parses `host:port` (or `off`) for --http. */
export function parseHttp(value: string): HttpListen | null {
  if (value === "off") return null;
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new RelayConfigError(`--http (RELAY_HTTP) must be host:port or off, got ${JSON.stringify(value)}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}

/** Turns argv and the environment into relay options; throws RelayConfigError. */
export function optionsFromArgs(
  argv: string[],
  env: NodeJS.ProcessEnv,
): { command: string; operand: string | undefined; options: RelayOptions; install: boolean; help: boolean; http: HttpListen | null } {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        ...Object.fromEntries(OPTION_SPECS.map((s) => [s.flag, { type: "string" as const }])),
        install: { type: "boolean" },
        http: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw new RelayConfigError(`${(err as Error).message} (see --help)`);
  }
  const command = parsed.positionals[0] ?? "relay";
  const operands = command === "backfill" || command === "init" ? 1 : 0;
  if (!["relay", "install", "backfill", "init"].includes(command) || parsed.positionals.length > 1 + operands) {
    throw new RelayConfigError(`unknown command ${JSON.stringify(parsed.positionals.join(" "))}: use relay, install, backfill, init or token (see --help)`);
  }
  const options: Record<string, unknown> = {};
  for (const spec of OPTION_SPECS) {
    const raw = ((parsed.values as Record<string, unknown>)[spec.flag] as string | undefined) ?? env[spec.env];
    if (raw === undefined || raw === "") continue;
    if (spec.kind === "int") {
      if (!/^\d+$/.test(raw.trim())) throw new RelayConfigError(`--${spec.flag} (${spec.env}) must be a whole number, got ${JSON.stringify(raw)}`);
      options[spec.key] = Number(raw);
    } else if (spec.kind === "notify") {
      options[spec.key] = parseNotifyRoutes(raw);
    } else if (spec.kind === "partition") {
      options[spec.key] = parsePartition(raw);
    } else {
      options[spec.key] = raw;
    }
  }
  const install = Boolean(parsed.values.install) || env.RELAY_INSTALL === "1" || env.RELAY_INSTALL === "true";
  const http = parseHttp((parsed.values.http as string | undefined) ?? env.RELAY_HTTP ?? DEFAULT_HTTP);
  return { command, operand: parsed.positionals[1], options: options as unknown as RelayOptions, install, help: Boolean(parsed.values.help), http };
}


/** Options of the `token` command. */
export interface TokenArgs {
  secret: string;
  sub: string;
  channels: string[];
  ttlSeconds: number;
}

/** Parses `token --sub … --channels … [--ttl …] [--jwt-secret …]`; throws RelayConfigError. */
export function tokenArgs(argv: string[], env: NodeJS.ProcessEnv): TokenArgs {
  let values;
  try {
    values = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { sub: { type: "string" }, channels: { type: "string" }, ttl: { type: "string" }, "jwt-secret": { type: "string" } },
    }).values;
  } catch (err) {
    throw new RelayConfigError(`${(err as Error).message} (usage: token --sub <user> --channels a,b [--ttl seconds])`);
  }
  const secret = values["jwt-secret"] ?? env.JWT_SECRET ?? "";
  if (secret.length < 32) throw new RelayConfigError("JWT_SECRET is not set (or shorter than 32 characters): use the Worker's JWT_SECRET");
  if (!values.sub) throw new RelayConfigError("--sub is required: the user the token is for");
  const channels = (values.channels ?? "").split(",").map((c) => c.trim()).filter(Boolean);
  if (channels.length === 0) throw new RelayConfigError("--channels is required: the channels (or patterns) the token may join, comma-separated");
  const ttl = values.ttl ?? "3600";
  if (!/^\d+$/.test(ttl) || Number(ttl) < 1) throw new RelayConfigError(`--ttl must be a whole number of seconds, got ${JSON.stringify(ttl)}`);
  return { secret, sub: values.sub, channels, ttlSeconds: Number(ttl) };
}
