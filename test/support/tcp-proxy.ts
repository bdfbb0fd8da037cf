/**
 * A TCP hop between WebSocket clients and the Worker that can cut every connection and refuse new
 * ones: a real network fault (the client sees an abnormal close), not a mocked socket.
 */

import type { AddressInfo } from "node:net";
import { createConnection, createServer, type Socket } from "node:net";

/** A running TCP proxy. */
export interface TcpProxy {
  /** `host:port` to give clients instead of the Worker's. */
  host: string;
  /** Destroys every open connection; with `refuse`, new ones are refused until `restore()`. */
  cut(options?: { refuse?: boolean }): void;
  restore(): void;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Sends new connections to another target (a restarted Worker). */
  retarget(target: string): void;
  close(): Promise<void>;
}

/** Starts a proxy to `target` (`http://127.0.0.1:port` or `host:port`). */
export async function startTcpProxy(target: string): Promise<TcpProxy> {
  const parse = (t: string) => new URL(t.includes("://") ? t : `http://${t}`);
  let { hostname, port } = parse(target);
  const open = new Set<Socket>();
  let refusing = false;
  let accepted = 0;
  const server = createServer((client) => {
    if (refusing) return void client.destroy();
    accepted++;
    const upstream = createConnection({ host: hostname, port: Number(port) });
    open.add(client);
    open.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    cut(options = {}) {
      refusing = options.refuse ?? false;
      for (const s of [...open]) s.destroy();
      open.clear();
    },
    restore() {
      refusing = false;
    },
    get accepted() {
      return accepted;
    },
    retarget(next) {
      ({ hostname, port } = parse(next));
    },
    close: () =>
      new Promise((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      }),
  };
}
