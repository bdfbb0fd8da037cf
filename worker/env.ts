/** Bindings and variables the Worker reads (wrangler.toml, `wrangler secret put`, `.dev.vars`). */
import type { Channel } from "./channel.ts";

/** The Worker's environment. Every variable is a string; `resolveWorkerConfig` parses them. */
export interface Env {
  /** One Durable Object per channel. */
  CHANNEL: DurableObjectNamespace<Channel>;
  /** Static assets (the demo page). */
  ASSETS?: Fetcher;
  /** Secret shared with the relay; signs `POST /ingest`. Required. */
  INGEST_SECRET?: string;
  /** The previous secret, still accepted while a rotation is under way. Optional. */
  INGEST_SECRET_PREVIOUS?: string;
  /** Events a channel keeps for resume. Default 10000. */
  REPLAY_MAX_EVENTS?: string;
  /** Seconds a channel keeps events for resume. Default 86400 (one day). */
  REPLAY_MAX_AGE_SECONDS?: string;
  /** Largest `POST /ingest` body, in bytes. Default 8388608 (8 MiB). */
  MAX_INGEST_BYTES?: string;
}

declare global {
  // Types `env` from "cloudflare:workers" / "cloudflare:test" as this Worker's Env.
  namespace Cloudflare {
    interface Env extends WorkerEnv {}
  }
}

type WorkerEnv = Env;
