/**
 * The relay's own HTTP endpoints: `/healthz` (the process lives), `/readyz` (connected, and leading
 * or standing by), `/metrics` (Prometheus text). Bound to 127.0.0.1 by default; nothing here shows
 * a secret (the database URL is never exported, not even redacted).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Relay } from "./relay.ts";

/** The relay's metrics, fed by its events. One registry per relay (several may share a process). */
export function relayMetrics(relay: Relay): Registry {
  const registry = new Registry();
  const labels = { name: relay.cursorName };
  registry.setDefaultLabels(labels);
  const read = new Counter({
    name: "relay_events_read_total",
    help: "Events read from the outbox (or NOTIFY) and put in a batch",
    labelNames: ["source"],
    registers: [registry],
  });
  const sent = new Counter({ name: "relay_events_sent_total", help: "Events the Worker accepted as new", labelNames: ["source"], registers: [registry] });
  const duplicates = new Counter({
    name: "relay_events_duplicate_total",
    help: "Events the Worker had already stored (a re-sent batch)",
    labelNames: ["source"],
    registers: [registry],
  });
  const batches = new Counter({ name: "relay_batches_total", help: "Batches acknowledged by the Worker", labelNames: ["source"], registers: [registry] });
  const seconds = new Histogram({
    name: "relay_batch_duration_seconds",
    help: "From a batch's first POST to its acknowledgement, retries included",
    labelNames: ["source"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const retries = new Counter({ name: "relay_retries_total", help: "POSTs that failed and were retried", registers: [registry] });
  const reconnects = new Counter({ name: "relay_disconnects_total", help: "Database sessions lost (followed by a reconnect)", registers: [registry] });
  const pruned = new Counter({ name: "relay_pruned_rows_total", help: "Delivered outbox rows deleted past the retention", registers: [registry] });
  const dropped = new Counter({ name: "relay_notify_dropped_total", help: "NOTIFY payloads dropped because the queue was full", registers: [registry] });
  const markers = new Counter({
    name: "relay_event_markers_total",
    help: "Events delivered as a marker instead of their data (too large for the relay or the Worker, or refused storage by the channel)",
    labelNames: ["source"],
    registers: [registry],
  });
  const refused = new Counter({
    name: "relay_events_refused_total",
    help: "Events the Worker refused on their own and the relay skipped (each logged with its source id)",
    registers: [registry],
  });
  new Gauge({
    name: "relay_leader",
    help: "1 while this relay holds the leader lock",
    registers: [registry],
    collect(this: Gauge) {
      this.set(relay.isLeader ? 1 : 0);
    },
  });
  new Gauge({
    name: "relay_connected",
    help: "1 while connected to Postgres",
    registers: [registry],
    collect(this: Gauge) {
      this.set(relay.isConnected ? 1 : 0);
    },
  });
  new Gauge({
    name: "relay_oldest_undelivered_seconds",
    help: "Age of the oldest committed outbox event not yet acknowledged (0 when caught up; leader only)",
    registers: [registry],
    async collect(this: Gauge) {
      const backlog = await relay.backlog().catch(() => null);
      if (backlog) this.set(backlog.oldestSeconds);
    },
  });
  new Gauge({
    name: "relay_wal_lag_bytes",
    help: "With --source wal: bytes of WAL its replication slot holds (not yet acknowledged; 0 when caught up; leader only)",
    registers: [registry],
    async collect(this: Gauge) {
      const lag = await relay.walLag().catch(() => null);
      if (lag) this.set(lag.bytes);
    },
  });
  // One read of pg_replication_slots per scrape feeds the three slot gauges below.
  let slot: Promise<Awaited<ReturnType<Relay["slotHealth"]>>> | null = null;
  const slotHealth = () =>
    (slot ??= relay
      .slotHealth()
      .catch(() => null)
      .finally(() => setTimeout(() => (slot = null), 0)));
  new Gauge({
    name: "relay_slot_retained_wal_bytes",
    help: "With a slot source: bytes of WAL its replication slot makes Postgres keep (from restart_lsn; leader only)",
    registers: [registry],
    async collect(this: Gauge) {
      const h = await slotHealth();
      if (h) this.set(h.retainedBytes);
    },
  });
  new Gauge({
    name: "relay_slot_safe_wal_size_bytes",
    help: "With a slot source: bytes the slot may still fall behind before max_slot_wal_keep_size invalidates it (absent when unlimited; leader only)",
    registers: [registry],
    async collect(this: Gauge) {
      const h = await slotHealth();
      if (h?.safeWalSize != null) this.set(h.safeWalSize);
    },
  });
  new Gauge({
    name: "relay_slot_wal_status",
    help: "With a slot source: 1 for the slot's wal_status (reserved, extended: fine; unreserved: about to be invalidated; lost: invalidated; leader only)",
    labelNames: ["status"],
    registers: [registry],
    async collect(this: Gauge) {
      const h = await slotHealth();
      this.reset();
      if (h?.walStatus) this.set({ status: h.walStatus }, 1);
    },
  });
  const slotLost = new Counter({
    name: "relay_slot_lost_total",
    help: "Replication slots found invalidated and made anew (their events were lost; every channel started a new epoch)",
    registers: [registry],
  });
  relay.on("slotLost", () => slotLost.inc());
  new Gauge({
    name: "relay_cursor_xmin",
    help: "xmin of the last acknowledged snapshot: every transaction below it is delivered",
    registers: [registry],
    collect(this: Gauge) {
      const xmin = relay.cursorXmin;
      if (xmin !== null) this.set(xmin);
    },
  });
  relay.on("batch", (b) => {
    read.inc({ source: b.source }, b.events);
    sent.inc({ source: b.source }, b.accepted);
    duplicates.inc({ source: b.source }, b.duplicates);
    batches.inc({ source: b.source });
    if (b.markers > 0) markers.inc({ source: b.source }, b.markers);
    seconds.observe({ source: b.source }, b.ms / 1000);
  });
  relay.on("retry", () => retries.inc());
  relay.on("refused", () => refused.inc());
  relay.on("disconnected", () => reconnects.inc());
  relay.on("pruned", (p) => pruned.inc(p.rows));
  relay.on("dropped", (d) => dropped.inc(d.count));
  return registry;
}

/** A running observability server. */
export interface ObservabilityServer {
  url: string;
  close(): Promise<void>;
}

/** Serves /healthz, /readyz and /metrics for `relay` on host:port (port 0: a free one). */
export async function serveObservability(relay: Relay, host: string, port: number): Promise<ObservabilityServer> {
  const registry = relayMetrics(relay);
  const server: Server = createServer(async (req, res) => {
    const json = (status: number, body: unknown) => res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
    try {
      if (req.method !== "GET") return json(405, { error: { code: "method_not_allowed", message: "GET only" } });
      if (req.url === "/healthz") return json(200, { ok: true });
      if (req.url === "/readyz") {
        const role = relay.isConnected ? (relay.isLeader ? "leader" : "standby") : "connecting";
        return json(role === "connecting" ? 503 : 200, { ready: role !== "connecting", role });
      }
      if (req.url === "/metrics") {
        const text = await registry.metrics();
        return void res.writeHead(200, { "Content-Type": registry.contentType }).end(text);
      }
      json(404, { error: { code: "not_found", message: "try /healthz, /readyz or /metrics" } });
    } catch {
      json(500, { error: { code: "internal", message: "internal error" } });
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, resolve);
  });
  const address = server.address() as AddressInfo;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${address.port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
