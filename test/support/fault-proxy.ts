/**
 * A real HTTP hop in front of the real Worker that can be told to fail: answer 500, or refuse
 * connections. This is how tests make "the Worker" fail without mocking the Worker.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";

/** What the proxy does with the next requests. */
export type FaultMode = "pass" | "error500" | "refuse";

/** A running proxy. */
export interface FaultProxy {
  url: string;
  mode: FaultMode;
  /** Where requests go; change it to follow a restarted Worker. */
  target: string;
  /** Requests seen, by outcome. */
  counts: { passed: number; failed: number };
  /** The event ids of every /ingest request received, in order, whatever its outcome. */
  ingests: string[][];
  close(): Promise<void>;
}

/** Starts a proxy forwarding to `target` (the Worker's base URL); `record: false` keeps no ids (long runs). */
export async function startFaultProxy(target: string, options: { record?: boolean } = {}): Promise<FaultProxy> {
  const sockets = new Set<Socket>();
  const proxy: FaultProxy = {
    url: "",
    mode: "pass",
    target,
    counts: { passed: 0, failed: 0 },
    ingests: [],
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    if (req.url === "/ingest" && options.record !== false) {
      try {
        proxy.ingests.push((JSON.parse(Buffer.concat(chunks).toString()) as { events: { id: string }[] }).events.map((e) => e.id));
      } catch {
        proxy.ingests.push([]);
      }
    }
    if (proxy.mode === "refuse") {
      proxy.counts.failed++;
      req.socket.destroy();
      return;
    }
    if (proxy.mode === "error500") {
      proxy.counts.failed++;
      res.writeHead(500, { "Content-Type": "application/json" }).end('{"error":{"code":"internal","message":"injected fault"}}');
      return;
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string" && k !== "host" && k !== "connection") headers[k] = v;
    try {
      const upstream = await fetch(new URL(req.url ?? "/", proxy.target), {
        method: req.method,
        headers,
        body: req.method === "GET" ? undefined : Buffer.concat(chunks),
      });
      const body = Buffer.from(await upstream.arrayBuffer());
      proxy.counts.passed++;
      res.writeHead(upstream.status, { "Content-Type": upstream.headers.get("content-type") ?? "application/json" }).end(body);
    } catch {
      proxy.counts.failed++;
      res.writeHead(502).end();
    }
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return proxy;
}
