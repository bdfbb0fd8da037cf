/**
 * The Worker: routing only. Ingest verification lives in ingest.ts, channels in channel.ts.
 */
import { Hono } from "hono";
import { CHANNEL_PATH_PREFIX, isValidChannel, SIGNATURE_HEADER, SIGNATURE_TOLERANCE_SECONDS, verifySignature } from "../protocol/index.ts";
import { AuthError, authorize } from "./auth.ts";
import { CAN_PUBLISH_HEADER, CHANNEL_NAME_HEADER, SHARD_HEADER, shardCount, shardName, USER_HEADER } from "./channel.ts";
import { resolveWorkerConfig, WorkerConfigError } from "./config.ts";
import { log } from "./log.ts";
import type { Env } from "./env.ts";
import { jsonError } from "./errors.ts";
import { ingest } from "./ingest.ts";

export { Channel } from "./channel.ts";
export { ChannelShard } from "./shard.ts";
export type { Env } from "./env.ts";

const app = new Hono<{ Bindings: Env }>();

app.get("/health", (c) => c.json({ ok: true }));

app.post("/ingest", ingest);

// partysocket's default URL, so `new PartySocket({ host, room: channel })` connects here.
app.get(`${CHANNEL_PATH_PREFIX}:channel`, async (c) => {
  const config = resolveWorkerConfig(c.env);
  const channel = c.req.param("channel");
  if (!isValidChannel(channel) || channel.length > config.maxChannelLength) {
    return jsonError(c, 400, "invalid_channel", `channel names are 1-${config.maxChannelLength} of A-Z a-z 0-9 _ . : @ -`);
  }
  if (c.req.header("Upgrade")?.toLowerCase() !== "websocket") {
    return jsonError(c, 426, "upgrade_required", "connect with a WebSocket (for example new PartySocket({ host, room }))");
  }
  let identity;
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
app.get("/channels/:channel/stats", async (c) => {
  const config = resolveWorkerConfig(c.env);
  const channel = c.req.param("channel");
  if (config.ingestSecrets.length === 0) return jsonError(c, 503, "not_configured", "INGEST_SECRET is not set on the Worker");
  const verdict = await verifySignature(config.ingestSecrets, c.req.header(SIGNATURE_HEADER), `GET ${c.req.path}`, SIGNATURE_TOLERANCE_SECONDS);
  if (verdict !== "ok") return jsonError(c, 401, "signature_mismatch", `sign "GET ${c.req.path}" with INGEST_SECRET in ${SIGNATURE_HEADER} (${verdict})`);
  if (!isValidChannel(channel)) return jsonError(c, 400, "invalid_channel", "channel names are 1-128 of A-Z a-z 0-9 _ . : @ -");
  return c.json(await c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel)).stats());
});

app.notFound((c) => jsonError(c, 404, "not_found", `no route for ${c.req.method} ${c.req.path}`));

app.onError((err, c) => {
  if (err instanceof WorkerConfigError) return jsonError(c, 503, err.code, err.message);
  // The stack goes to the log, never to the client.
  log("error", "unhandled", { path: c.req.path, error: String(err), stack: err.stack });
  return jsonError(c, 500, "internal", "internal error");
});

export default app;
