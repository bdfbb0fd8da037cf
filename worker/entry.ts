/**
 * `pg-edge-realtime/worker`: realtime in your own Worker. Export the two Durable Object classes
 * from your main module, bind them as CHANNEL and SHARD (`npx pg-edge-realtime init` writes the
 * wrangler.toml lines), and mount the routes beside your own:
 *
 * ```ts
 * import { Hono } from "hono";
 * import { realtimeRoutes, type RealtimeEnv } from "pg-edge-realtime/worker";
 * export { Channel, ChannelShard } from "pg-edge-realtime/worker";
 *
 * const app = new Hono<{ Bindings: RealtimeEnv }>();
 * app.get("/api/hello", (c) => c.text("hello"));
 * app.route("/", realtimeRoutes());
 * export default app;
 * ```
 *
 * Configuration comes from the Worker's variables and secrets (INGEST_SECRET, JWT_SECRET, ...), as
 * in this repository's wrangler.toml.
 */
export { Channel } from "./channel.ts";
export { type AuthConfig, resolveWorkerConfig, type SocketLimits, WORKER_DEFAULTS, type WorkerConfig, WorkerConfigError } from "./config.ts";
export type { RealtimeEnv } from "./env.ts";
export { handleRealtime, isRealtimePath, realtimeRoutes } from "./routes.ts";
export { ChannelShard } from "./shard.ts";
