/** Bindings and variables the Worker reads (wrangler.toml, `wrangler secret put`, `.dev.vars`). */
import type { Channel } from "./channel.ts";
import type { ChannelShard } from "./shard.ts";

/**
 * What the realtime routes and objects need in a Worker's environment: the two Durable Object
 * bindings, and the variables and secrets (every one a string; `resolveWorkerConfig` parses them).
 * A Worker's own Env extends it.
 */
export interface RealtimeEnv {
  /** One Durable Object per channel (its root). */
  CHANNEL: DurableObjectNamespace<Channel>;
  /** The shards of sharded channels (SHARDS). */
  SHARD: DurableObjectNamespace<ChannelShard>;
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
  /** Most events in one `POST /ingest`. Default 1000. */
  MAX_BATCH_EVENTS?: string;
  /** Longest channel name (at most 128). Default 128. */
  MAX_CHANNEL_LENGTH?: string;
  /** HS256 secret for browser tokens minted by your backend (at least 32 characters). Secret. */
  JWT_SECRET?: string;
  /** JWKS URL for RS256/ES256 tokens from an identity provider. */
  JWT_JWKS_URL?: string;
  /** Least seconds between JWKS refetches for an unknown key id. Default 60. */
  JWT_JWKS_REFRESH_SECONDS?: string;
  /** Required token issuer (`iss`), when set. */
  JWT_ISSUER?: string;
  /** Required token audience (`aud`), when set. */
  JWT_AUDIENCE?: string;
  /** Claim listing the channel patterns a token may join. Default `channels`. */
  JWT_CHANNELS_CLAIM?: string;
  /** Claim listing the channel patterns a token may broadcast on. Default `publish`. */
  JWT_PUBLISH_CLAIM?: string;
  /** "true" accepts tokens without `exp`, which never expire. Default false: such tokens are refused. */
  ALLOW_TOKENS_WITHOUT_EXP?: string;
  /** Rows a channel keeps as retained state at most. Default 10000. */
  STATE_MAX_ROWS?: string;
  /** Bytes of retained rows a channel keeps at most. Default 4194304 (4 MiB). */
  STATE_MAX_BYTES?: string;
  /** Largest retained row, in bytes of JSON (at most 1500000); a larger one is kept as an `oversized` marker. Default 1048576 (1 MiB). */
  STATE_MAX_ROW_BYTES?: string;
  /** Channels whose sockets are spread over shard objects: comma-separated `<pattern>=<shards>`. Default none. */
  SHARDS?: string;
  /** Sockets on a channel's root past which new sockets go to shards added as needed. Default 0 (never). */
  AUTO_SHARD_SOCKETS?: string;
  /** Channels whose updates are conflated: comma-separated `<pattern>=<ms>`. Default none. */
  CONFLATE?: string;
  /** Comma-separated channel patterns anyone may join without a token. Default none. */
  PUBLIC_CHANNELS?: string;
  /** Comma-separated origins browsers may connect from. Default: any. */
  ALLOWED_ORIGINS?: string;
  /** Sockets one user may hold on one channel. Default 5. */
  MAX_CONNECTIONS_PER_USER?: string;
  /** Sockets one channel accepts. Default 10000. */
  MAX_SOCKETS_PER_CHANNEL?: string;
  /** Largest inbound WebSocket message, in bytes. Default 4096. */
  MAX_FRAME_BYTES?: string;
  /** Inbound messages per second per socket. Default 10. */
  MAX_MESSAGES_PER_SECOND?: string;
}

/** The name the Worker's code used before the package entry existed. */
export type Env = RealtimeEnv;
