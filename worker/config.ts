/** The Worker's configuration: defaults in one place, parsed and checked once per isolate. */
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
}

/** Defaults for every optional variable. */
export const WORKER_DEFAULTS = {
  REPLAY_MAX_EVENTS: 10_000,
  REPLAY_MAX_AGE_SECONDS: 86_400,
  MAX_INGEST_BYTES: 8 * 1024 * 1024,
} as const;

/** A variable in the Worker's environment has a value it cannot use. */
export class WorkerConfigError extends Error {
  readonly code = "not_configured";
  override readonly name = "WorkerConfigError";
}

function positiveInt(env: Env, name: keyof typeof WORKER_DEFAULTS, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return WORKER_DEFAULTS[name];
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new WorkerConfigError(`${name} must be an integer from 1 to ${max}; it is ${JSON.stringify(raw)} (wrangler.toml [vars])`);
  }
  return value;
}

const cache = new WeakMap<object, WorkerConfig>();

/** Parses the environment; throws {@link WorkerConfigError} naming the bad variable. */
export function resolveWorkerConfig(env: Env): WorkerConfig {
  const hit = cache.get(env);
  if (hit) return hit;
  const config: WorkerConfig = {
    ingestSecrets: [env.INGEST_SECRET, env.INGEST_SECRET_PREVIOUS].filter((s): s is string => !!s),
    replayMaxEvents: positiveInt(env, "REPLAY_MAX_EVENTS", 1_000_000),
    replayMaxAgeMs: positiveInt(env, "REPLAY_MAX_AGE_SECONDS", 30 * 86_400) * 1000,
    // A Durable Object RPC argument may be at most 32 MiB; the body must fit in one.
    maxIngestBytes: positiveInt(env, "MAX_INGEST_BYTES", 32 * 1024 * 1024 - 1024 * 1024),
  };
  cache.set(env, config);
  return config;
}
