/**
 * The realtime routes, as a Hono app to mount in any Worker (`app.route("/", realtimeRoutes())`,
 * or under a prefix) or to call from a plain fetch handler through {@link handleRealtime}:
 * - `POST /ingest`: signed batches from the relay (ingest.ts);
 * - `GET /parties/main/<channel>`: a channel's WebSocket, partysocket's default URL;
 * - `GET /channels/<channel>/stats`: a channel's counters, signed like ingest.
 * Channels live in the Durable Objects `Channel` and `ChannelShard`, bound as CHANNEL and SHARD.
 */
import { Hono } from "hono";
import { CHANNEL_PATH_PREFIX, isValidChannel, SIGNATURE_HEADER, SIGNATURE_TOLERANCE_SECONDS, verifySignature } from "../protocol/index.ts";
import { AuthError, authorize } from "./auth.ts";
import { resolveWorkerConfig, type WorkerConfig, WorkerConfigError } from "./config.ts";
import type { RealtimeEnv } from "./env.ts";
import { jsonError } from "./errors.ts";
import { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, isUpgrade, SHARD_HEADER, USER_HEADER } from "./hub.ts";
import { ingest } from "./ingest.ts";
import { log } from "./log.ts";
import { shardCount, shardName } from "./shard-fanout.ts";

/** The realtime routes: a Hono app whose Bindings include {@link RealtimeEnv}. */
export function realtimeRoutes<E extends { Bindings: RealtimeEnv } = { Bindings: RealtimeEnv }>(): Hono<E> {
  const routes = new Hono<{ Bindings: RealtimeEnv }>();

  routes.post("/ingest", ingest);

  // partysocket's default URL, so `new PartySocket({ host, room: channel })` connects here.
  routes.get(`${CHANNEL_PATH_PREFIX}:channel`, async (c) => {
    const config = resolveWorkerConfig(c.env);
    const channel = c.req.param("channel");
    if (!validChannel(channel, config)) return jsonError(c, 400, "invalid_channel", channelRule(config));
    if (!isUpgrade(c.req.raw)) {
      return jsonError(c, 426, "upgrade_required", "connect with a WebSocket (for example new PartySocket({ host, room }))");
    }
    let identity: Awaited<ReturnType<typeof authorize>>;
    try {
      identity = await authorize(c.req.raw, channel, config.auth);
    } catch (err) {
      if (err instanceof AuthError) return jsonError(c, err.status, err.code, err.message);
      throw err;
    }
    // The channel learns who connects from trusted headers; the token itself goes no further.
    const url = new URL(c.req.url);
    url.searchParams.delete("token");
    const headers = new Headers(c.req.raw.headers);
    headers.delete("Authorization");
    // Only this Worker (and the channel's root) set the objects' own headers.
    for (const name of [...headers.keys()]) if (name.startsWith("x-realtime-")) headers.delete(name);
    headers.set(CHANNEL_NAME_HEADER, channel);
    if (identity.sub) headers.set(USER_HEADER, identity.sub);
    else headers.delete(USER_HEADER);
    if (identity.canPublish) headers.set(CAN_PUBLISH_HEADER, "1");
    else headers.delete(CAN_PUBLISH_HEADER);
    const shards = shardCount(config.shards, channel);
    if (shards > 0) {
      // A sharded channel: any shard will do, the channel looks the same from each.
      const index = crypto.getRandomValues(new Uint32Array(1))[0]! % shards;
      headers.set(SHARD_HEADER, String(index));
      return c.env.SHARD.get(c.env.SHARD.idFromName(shardName(channel, index))).fetch(new Request(url, { headers }));
    }
    const stub = c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel));
    return stub.fetch(new Request(url, { headers }));
  });

  // Operators' view of a channel, signed like ingest (the relay's secret) over "GET <path>", so it
  // needs no extra credential and is never open to browsers.
  routes.get("/channels/:channel/stats", async (c) => {
    const config = resolveWorkerConfig(c.env);
    const channel = c.req.param("channel");
    if (config.ingestSecrets.length === 0) return jsonError(c, 503, "not_configured", "INGEST_SECRET is not set on the Worker");
    const verdict = await verifySignature(config.ingestSecrets, c.req.header(SIGNATURE_HEADER), `GET ${c.req.path}`, SIGNATURE_TOLERANCE_SECONDS);
    if (verdict !== "ok") return jsonError(c, 401, "signature_mismatch", `sign "GET ${c.req.path}" with INGEST_SECRET in ${SIGNATURE_HEADER} (${verdict})`);
    if (!validChannel(channel, config)) return jsonError(c, 400, "invalid_channel", channelRule(config));
    return c.json(await c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel)).stats());
  });

  routes.onError((err, c) => {
    if (err instanceof WorkerConfigError) return jsonError(c, 503, err.code, err.message);
    // The stack goes to the log, never to the client.
    log("error", "unhandled", { path: c.req.path, error: String(err), stack: err.stack });
    return jsonError(c, 500, "internal", "internal error");
  });
  return routes as unknown as Hono<E>;
}

/** A channel name this Worker serves: the protocol's characters, at most MAX_CHANNEL_LENGTH of them. */
function validChannel(channel: string, config: WorkerConfig): boolean {
  return isValidChannel(channel) && channel.length <= config.maxChannelLength;
}

function channelRule(config: WorkerConfig): string {
  return `channel names are 1-${config.maxChannelLength} of A-Z a-z 0-9 _ . : @ -`;
}

const STATS_PATH = /^\/channels\/[^/]+\/stats$/;

/** True for a path the realtime routes answer (mounted at the root). */
export function isRealtimePath(pathname: string): boolean {
  return pathname === "/ingest" || pathname.startsWith(CHANNEL_PATH_PREFIX) || STATS_PATH.test(pathname);
}

const shared = new WeakMap<object, Hono<{ Bindings: RealtimeEnv }>>();

/**
 * For a Worker with its own fetch handler: answers a realtime request, or returns null for any
 * other, which the caller handles as before (as PartyServer's routePartykitRequest does).
 *
 * ```ts
 * export { Channel, ChannelShard } from "pg-edge-realtime/worker";
 * export default {
 *   async fetch(request, env, ctx) {
 *     return (await handleRealtime(request, env, ctx)) ?? myApp(request, env, ctx);
 *   },
 * };
 * ```
 */
export async function handleRealtime(request: Request, env: RealtimeEnv, ctx?: ExecutionContext): Promise<Response | null> {
  if (!isRealtimePath(new URL(request.url).pathname)) return null;
  let routes = shared.get(env);
  if (!routes) shared.set(env, (routes = realtimeRoutes()));
  return routes.fetch(request, env, ctx);
}
