/**
 * An HTTP hop that passes requests on to the Worker, responses streamed as they come, and refuses
 * every WebSocket upgrade (403), as some corporate proxies do: what a client meets on a network
 * that cannot hold a WebSocket. `cut()` ends the streams under way, as a flaky network would.
 */
import { createServer, type IncomingMessage, request, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";

export interface NoWebSocketProxy {
  /** `host:port` to give clients instead of the Worker's. */
  host: string;
  /** Upgrades refused so far. */
  readonly refusedUpgrades: number;
  /** Requests passed on so far. */
  readonly passed: number;
  /** Ends every response under way (event streams included). */
  cut(): void;
  close(): Promise<void>;
}

export async function startNoWebSocketProxy(target: string): Promise<NoWebSocketProxy> {
  const upstream = new URL(target);
  const open = new Set<ServerResponse>();
  const sockets = new Set<Socket>();
  let refusedUpgrades = 0;
  let passed = 0;
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    passed++;
    const forward = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        open.add(res);
        res.on("close", () => open.delete(res));
        answer.pipe(res);
      },
    );
    forward.on("error", () => res.destroy());
    req.pipe(forward);
  });
  server.on("upgrade", (_req, socket: Socket) => {
    refusedUpgrades++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    get refusedUpgrades() {
      return refusedUpgrades;
    },
    get passed() {
      return passed;
    },
    cut() {
      for (const res of open) res.destroy();
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
