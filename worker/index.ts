/**
 * This repository's Worker: the realtime routes (worker/routes.ts, the same ones a user mounts
 * from `pg-edge-realtime/worker`), a health check, and the demo page as static assets.
 */
import { Hono } from "hono";
import type { RealtimeEnv } from "./entry.ts";
import { realtimeRoutes } from "./entry.ts";
import { jsonError } from "./errors.ts";

export { Channel, ChannelShard } from "./entry.ts";

/** The Worker's environment: the realtime bindings and variables, and the demo's assets. */
export interface Env extends RealtimeEnv {
  /** Static assets (the demo page). */
  ASSETS?: Fetcher;
}

const app = new Hono<{ Bindings: Env }>();

app.get("/health", (c) => c.json({ ok: true }));
app.route("/", realtimeRoutes<{ Bindings: Env }>());
app.notFound((c) => jsonError(c, 404, "not_found", `no route for ${c.req.method} ${c.req.path}`));

export default app;
