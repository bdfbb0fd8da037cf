/**
 * The realtime routes, as a Hono app to mount in any Worker (`app.route("/", realtimeRoutes())`,
 * or under a prefix) or to call from a plain fetch handler through {@link handleRealtime}:
 * - `POST /ingest`: signed batches from the relay (ingest.ts);
 * - `GET /parties/main/<channel>`: a channel's WebSocket, partysocket's default URL; with
 *   `Accept: text/event-stream`, the same frames as Server-Sent Events (worker/event-streams.ts);
 * - `GET /channels/<channel>/events`: HTTP catch-up, the events after `since` as JSON;
 * - `GET /channels/<channel>/stats`: a channel's counters, signed like ingest.
 * Channels live in the Durable Objects `Channel` and `ChannelShard`, bound as CHANNEL and SHARD.
 */
import { Hono } from "hono";
import {
  CHANNEL_PATH_PREFIX,
  EVENT_STREAM_TYPE,
  isValidChannel,
  MAX_CATCH_UP_EVENTS,
  SIGNATURE_HEADER,
  SIGNATURE_TOLERANCE_SECONDS,
  verifySignature,
} from "../protocol/index.ts";
import { AuthError, authorize } from "./auth.ts";
import { resolveWorkerConfig, type WorkerConfig, WorkerConfigError } from "./config.ts";
import type { RealtimeEnv } from "./env.ts";
import { jsonError } from "./errors.ts";
import { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, isUpgrade, SHARD_HEADER, USER_HEADER, wantsEventStream } from "./hub.ts";
import { ingest } from "./ingest.ts";
import { joinQuery } from "./join.ts";
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
    const stream = wantsEventStream(c.req.raw);
    if (!stream && !isUpgrade(c.req.raw)) {
      return jsonError(
        c,
        426,
        "upgrade_required",
        `connect with a WebSocket (for example new PartySocket({ host, room })), or ask for an event stream (Accept: ${EVENT_STREAM_TYPE})`,
      );
    }
    const forwarded = await forwardable(c.req.raw, channel, config);
    if (forwarded instanceof AuthError) return jsonError(c, forwarded.status, forwarded.code, forwarded.message);
    const { url, headers } = forwarded;
    if (stream) {
      // Event streams are held by the channel's root, sharded or not.
      const res = await c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel)).fetch(new Request(url, { headers }));
      return withCors(res, c.req.header("Origin"));
    }
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

  // HTTP catch-up: the events after `since`, as JSON, for server-side consumers and background
  // fetches; the same tokens as a channel's WebSocket (`?token=` or Authorization: Bearer).
  routes.get("/channels/:channel/events", async (c) => {
    const config = resolveWorkerConfig(c.env);
    const channel = c.req.param("channel");
    if (!validChannel(channel, config)) return jsonError(c, 400, "invalid_channel", channelRule(config));
    const limitText = c.req.query("limit");
    const limit = limitText === undefined ? MAX_CATCH_UP_EVENTS : Number(limitText);
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_CATCH_UP_EVENTS) {
      return jsonError(c, 400, "invalid_query", `limit must be an integer from 1 to ${MAX_CATCH_UP_EVENTS}`);
    }
    const forwarded = await forwardable(c.req.raw, channel, config);
    if (forwarded instanceof AuthError) return jsonError(c, forwarded.status, forwarded.code, forwarded.message);
    const url = new URL(c.req.url);
    const answer = await c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel)).catchUp(channel, joinQuery(url), url.searchParams.get("filter"), limit);
    if (!answer.ok) return withCors(jsonError(c, 400, answer.code, answer.message), c.req.header("Origin"));
    return withCors(
      new Response(answer.json, { headers: { "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store" } }),
      c.req.header("Origin"),
    );
  });

  // Browsers may send the token as a header (a preflighted request); the origin rule is the channel's.
  routes.options("/channels/:channel/events", (c) => {
    const origin = c.req.header("Origin");
    const config = resolveWorkerConfig(c.env);
    if (origin && config.auth.allowedOrigins && !config.auth.allowedOrigins.includes(origin)) return c.body(null, 403);
    return c.body(null, 204, {
      ...(origin ? { "Access-Control-Allow-Origin": origin, Vary: "Origin" } : {}),
      "Access-Control-Allow-Methods": "GET",
      "Access-Control-Allow-Headers": "Authorization",
      "Access-Control-Max-Age": "600",
    });
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

/**
 * A request to pass on to a channel's objects once `authorize` let it through: its URL without the
 * token, and the trusted headers that say who it is (the token itself goes no further; only this
 * Worker and the channel's root set the objects' own headers). The AuthError when refused.
 */
async function forwardable(request: Request, channel: string, config: WorkerConfig): Promise<{ url: URL; headers: Headers } | AuthError> {
  let identity: Awaited<ReturnType<typeof authorize>>;
  try {
    identity = await authorize(request, channel, config.auth);
  } catch (err) {
    if (err instanceof AuthError) return err;
    throw err;
  }
  const url = new URL(request.url);
  url.searchParams.delete("token");
  const headers = new Headers(request.headers);
  headers.delete("Authorization");
  for (const name of [...headers.keys()]) if (name.startsWith("x-realtime-")) headers.delete(name);
  headers.set(CHANNEL_NAME_HEADER, channel);
  if (identity.sub) headers.set(USER_HEADER, identity.sub);
  if (identity.canPublish) headers.set(CAN_PUBLISH_HEADER, "1");
  return { url, headers };
}

/**
 * `res` readable by a page of `origin` (an event stream or a catch-up answer fetched across
 * origins): `authorize` already held the origin to ALLOWED_ORIGINS. WebSockets need no CORS.
 */
function withCors(res: Response, origin: string | undefined): Response {
  if (!origin) return res;
  const out = new Response(res.body, res);
  out.headers.set("Access-Control-Allow-Origin", origin);
  out.headers.append("Vary", "Origin");
  return out;
}

/** A channel name this Worker serves: the protocol's characters, at most MAX_CHANNEL_LENGTH of them. */
function validChannel(channel: string, config: WorkerConfig): boolean {
  return isValidChannel(channel) && channel.length <= config.maxChannelLength;
}

function channelRule(config: WorkerConfig): string {
  return `channel names are 1-${config.maxChannelLength} of A-Z a-z 0-9 _ . : @ -`;
}

const CHANNEL_API_PATH = /^\/channels\/[^/]+\/(stats|events)$/;

/** True for a path the realtime routes answer (mounted at the root). */
export function isRealtimePath(pathname: string): boolean {
  return pathname === "/ingest" || pathname.startsWith(CHANNEL_PATH_PREFIX) || CHANNEL_API_PATH.test(pathname);
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
