/** The Worker's configuration: defaults in one place, parsed and checked once per isolate. */
import { MAX_INGEST_EVENTS, MIN_JWT_SECRET_LENGTH } from "../protocol/index.ts";
import type { Env } from "./env.ts";

/** Parsed Worker configuration. */
export interface WorkerConfig {
  /** Secrets accepted on `POST /ingest`, current first. Empty when INGEST_SECRET is unset. */
  ingestSecrets: string[];
  /** Events a channel keeps for resume. */
  replayMaxEvents: number;
  /** Milliseconds a channel keeps events for resume. */
  replayMaxAgeMs: number;
  /** Largest `POST /ingest` body, in bytes. */
  maxIngestBytes: number;
  /** Most events in one `POST /ingest`. */
  maxBatchEvents: number;
  /** Longest channel name a browser may join. */
  maxChannelLength: number;
  /** Browser tokens: how they are verified and what they may join. */
  auth: AuthConfig;
  /** Per-socket and per-channel limits, enforced by the channel. */
  limits: SocketLimits;
  /** Retained state bounds per channel. */
  stateMaxRows: number;
  stateMaxBytes: number;
  /** Largest retained row, in bytes of JSON; a larger one is retained (and sent) as an `oversized` marker. */
  stateMaxRowBytes: number;
  /** Channel patterns whose updates are conflated, with their window in ms (first match wins). */
  conflate: { pattern: string; ms: number }[];
  /** Channel patterns whose sockets live on shard objects, with their count (first match wins). */
  shards: { pattern: string; count: number }[];
  /** Sockets on a channel's root past which new ones go to shards it adds as needed (0: never). */
  autoShardSockets: number;
}

/** How browser tokens are verified and which channels need none. */
export interface AuthConfig {
  /** HS256 secret, if tokens are signed by the app's backend. */
  jwtSecret: string | null;
  /** JWKS URL, for RS256/ES256 tokens of an identity provider. */
  jwksUrl: string | null;
  /** Least time between two fetches of the JWKS for an unknown key id, in ms. */
  jwksRefreshMs: number;
  /** Required `iss`, when set. */
  issuer: string | null;
  /** Required `aud` (one of the token's), when set. */
  audience: string | null;
  /** The claim listing the channel patterns a token may join. */
  channelsClaim: string;
  /** The claim listing the channel patterns a token may broadcast on. */
  publishClaim: string;
  /** Channel patterns anyone may join without a token. */
  publicChannels: string[];
  /** Origins a browser upgrade may come from; null: any. */
  allowedOrigins: string[] | null;
  /** Accept tokens without `exp` (they never expire). */
  allowTokensWithoutExp: boolean;
}

/** Limits the Channel enforces on its sockets. */
export interface SocketLimits {
  /** Sockets one user (token `sub`) may hold on one channel. */
  connectionsPerUser: number;
  /** Sockets one channel accepts in all. */
  socketsPerChannel: number;
  /** Largest inbound WebSocket message, in bytes. */
  frameBytes: number;
  /** Inbound messages per second one socket may send (pings, answered by the runtime, do not count). */
  messagesPerSecond: number;
}

/** Defaults for every optional numeric variable. */
export const WORKER_DEFAULTS = {
  REPLAY_MAX_EVENTS: 10_000,
  REPLAY_MAX_AGE_SECONDS: 86_400,
  MAX_INGEST_BYTES: 8 * 1024 * 1024,
  MAX_BATCH_EVENTS: MAX_INGEST_EVENTS,
  MAX_CHANNEL_LENGTH: 128,
  MAX_CONNECTIONS_PER_USER: 5,
  MAX_SOCKETS_PER_CHANNEL: 10_000,
  MAX_FRAME_BYTES: 4096,
  MAX_MESSAGES_PER_SECOND: 10,
  JWT_JWKS_REFRESH_SECONDS: 60,
  STATE_MAX_ROWS: 10_000,
  STATE_MAX_BYTES: 4 * 1024 * 1024,
  STATE_MAX_ROW_BYTES: 1024 * 1024,
  AUTO_SHARD_SOCKETS: 0,
} as const;

/** A variable in the Worker's environment has a value it cannot use. */
export class WorkerConfigError extends Error {
  readonly code = "not_configured";
  override readonly name = "WorkerConfigError";
}

function positiveInt(env: Env, name: keyof typeof WORKER_DEFAULTS, max: number, min = 1): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return WORKER_DEFAULTS[name];
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new WorkerConfigError(`${name} must be an integer from ${min} to ${max}; it is ${JSON.stringify(raw)} (wrangler.toml [vars])`);
  }
  return value;
}

/** A boolean variable: "true" or "1" (anything else but unset or "false"/"0" is an error). */
function flag(env: Env, name: "ALLOW_TOKENS_WITHOUT_EXP"): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (raw === undefined || raw === "" || raw === "false" || raw === "0") return false;
  if (raw === "true" || raw === "1") return true;
  throw new WorkerConfigError(`${name} must be true or false; it is ${JSON.stringify(env[name])} (wrangler.toml [vars])`);
}

function list(raw: string | undefined): string[] {
  return (raw ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function optional(raw: string | undefined): string | null {
  return raw && raw.trim() !== "" ? raw.trim() : null;
}

const cache = new WeakMap<object, WorkerConfig>();

/** Parses the environment; throws {@link WorkerConfigError} naming the bad variable. */
export function resolveWorkerConfig(env: Env): WorkerConfig {
  const hit = cache.get(env);
  if (hit) return hit;
  const jwtSecret = optional(env.JWT_SECRET);
  if (jwtSecret && jwtSecret.length < MIN_JWT_SECRET_LENGTH) {
    throw new WorkerConfigError(`JWT_SECRET must be at least ${MIN_JWT_SECRET_LENGTH} characters (try: openssl rand -hex 32)`);
  }
  const jwksUrl = optional(env.JWT_JWKS_URL);
  if (jwksUrl && !/^https?:\/\//.test(jwksUrl)) throw new WorkerConfigError("JWT_JWKS_URL must be an http(s) URL");
  const origins = list(env.ALLOWED_ORIGINS);
  const config: WorkerConfig = {
    ingestSecrets: [env.INGEST_SECRET, env.INGEST_SECRET_PREVIOUS].filter((s): s is string => !!s),
    replayMaxEvents: positiveInt(env, "REPLAY_MAX_EVENTS", 1_000_000),
    replayMaxAgeMs: positiveInt(env, "REPLAY_MAX_AGE_SECONDS", 30 * 86_400) * 1000,
    // A Durable Object RPC argument may be at most 32 MiB; the body must fit in one.
    maxIngestBytes: positiveInt(env, "MAX_INGEST_BYTES", 31 * 1024 * 1024),
    maxBatchEvents: positiveInt(env, "MAX_BATCH_EVENTS", 10_000),
    maxChannelLength: positiveInt(env, "MAX_CHANNEL_LENGTH", 128),
    auth: {
      jwtSecret,
      jwksUrl,
      jwksRefreshMs: positiveInt(env, "JWT_JWKS_REFRESH_SECONDS", 86_400, 0) * 1000,
      issuer: optional(env.JWT_ISSUER),
      audience: optional(env.JWT_AUDIENCE),
      channelsClaim: optional(env.JWT_CHANNELS_CLAIM) ?? "channels",
      publishClaim: optional(env.JWT_PUBLISH_CLAIM) ?? "publish",
      publicChannels: list(env.PUBLIC_CHANNELS),
      allowedOrigins: origins.length === 0 || origins.includes("*") ? null : origins,
      allowTokensWithoutExp: flag(env, "ALLOW_TOKENS_WITHOUT_EXP"),
    },
    limits: {
      connectionsPerUser: positiveInt(env, "MAX_CONNECTIONS_PER_USER", 10_000),
      // Cloudflare accepts at most 32,768 WebSockets per Durable Object.
      socketsPerChannel: positiveInt(env, "MAX_SOCKETS_PER_CHANNEL", 32_768),
      frameBytes: positiveInt(env, "MAX_FRAME_BYTES", 1024 * 1024),
      messagesPerSecond: positiveInt(env, "MAX_MESSAGES_PER_SECOND", 10_000),
    },
    stateMaxRows: positiveInt(env, "STATE_MAX_ROWS", 1_000_000),
    // A snapshot travels in one WebSocket message (at most 32 MiB).
    stateMaxBytes: positiveInt(env, "STATE_MAX_BYTES", 16 * 1024 * 1024),
    // A retained row is one SQLite value, and Durable Object SQLite refuses values over 2 MB.
    stateMaxRowBytes: positiveInt(env, "STATE_MAX_ROW_BYTES", 1_500_000, 1024),
    conflate: list(env.CONFLATE).map((entry) => {
      const m = /^([^=]+)=(\d{1,6})$/.exec(entry);
      if (!m || Number(m[2]) < 1)
        throw new WorkerConfigError(`CONFLATE entries are <channel pattern>=<milliseconds>, e.g. "dashboard:*=250"; got ${JSON.stringify(entry)}`);
      return { pattern: m[1]!, ms: Number(m[2]) };
    }),
    shards: list(env.SHARDS).map((entry) => {
      const m = /^([^=]+)=(\d{1,3})$/.exec(entry);
      if (!m || Number(m[2]) < 2 || Number(m[2]) > 256)
        throw new WorkerConfigError(`SHARDS entries are <channel pattern>=<2-256 shards>, e.g. "live:*=8"; got ${JSON.stringify(entry)}`);
      return { pattern: m[1]!, count: Number(m[2]) };
    }),
    autoShardSockets: positiveInt(env, "AUTO_SHARD_SOCKETS", 32_768, 0),
  };
  if (config.autoShardSockets > config.limits.socketsPerChannel) {
    throw new WorkerConfigError(
      `AUTO_SHARD_SOCKETS (${config.autoShardSockets}) must not exceed MAX_SOCKETS_PER_CHANNEL (${config.limits.socketsPerChannel}): a root would refuse sockets before it started adding shards`,
    );
  }
  cache.set(env, config);
  return config;
}
