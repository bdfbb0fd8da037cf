/**
 * The demo's tiny write API, run by `npm run dev` beside the database (it is not part of the
 * edge): the page's form POSTs here, the row goes into Postgres, and the page shows it only when
 * its event comes back through relay → Worker → Durable Object.
 */

import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { mintToken } from "../token/index.ts";

/** The demo table, as the README and the issue describe it. */
export const TODOS_DDL = `
  create table if not exists todos (
    id bigint generated always as identity primary key,
    title text not null,
    done boolean not null default false,
    created_at timestamptz not null default now()
  )`;

/** A running demo API. */
export interface DemoApi {
  url: string;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let text = "";
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 10_000) throw new Error("body too large");
  }
  return JSON.parse(text);
}

/** Options of {@link startDemoApi}. */
export interface DemoApiOptions {
  /** The Worker's JWT_SECRET: `GET /token` mints a token for a new visitor with it. */
  jwtSecret?: string;
}

/**
 * Serves `GET /todos`, `POST /todos` and `GET /token` against `databaseUrl` on `port` (0: any
 * free port). `/token` is what your backend would do: a token per visitor, for `todos`, allowed
 * to broadcast there.
 */
export async function startDemoApi(databaseUrl: string, port = 0, options: DemoApiOptions = {}): Promise<DemoApi> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 });
  const server: Server = createServer(async (req, res) => {
    // The page is served by the Worker (another origin).
    res.setHeader("Access-Control-Allow-Origin", "*");
    res.setHeader("Access-Control-Allow-Headers", "Content-Type");
    res.setHeader("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    try {
      if (req.method === "OPTIONS") return void res.writeHead(204).end();
      if (req.url === "/todos" && req.method === "GET") {
        const { rows } = await pool.query("select id::int, title, done, created_at from todos order by id");
        return send(res, 200, rows);
      }
      if (req.url === "/token" && req.method === "GET") {
        if (!options.jwtSecret) return send(res, 404, { error: { code: "not_found", message: "this demo API mints no tokens" } });
        const token = await mintToken({ secret: options.jwtSecret, sub: `visitor-${randomUUID().slice(0, 8)}`, channels: ["todos"], publish: ["todos"] });
        return send(res, 200, { token });
      }
      if (req.url === "/todos" && req.method === "POST") {
        let body: unknown;
        try {
          body = await readJson(req);
        } catch {
          return send(res, 400, { error: { code: "invalid_body", message: 'send JSON {"title": "..."}' } });
        }
        const title = (body as { title?: unknown })?.title;
        if (typeof title !== "string" || title.trim() === "" || title.length > 200) {
          return send(res, 400, { error: { code: "invalid_body", message: "title must be a non-empty string of at most 200 characters" } });
        }
        const { rows } = await pool.query("insert into todos (title) values ($1) returning id::int, title, done, created_at", [title.trim()]);
        return send(res, 201, rows[0]);
      }
      send(res, 404, { error: { code: "not_found", message: `no route for ${req.method} ${req.url}` } });
    } catch (err) {
      process.stderr.write(`demo api: ${(err as Error).message}\n`);
      send(res, 500, { error: { code: "internal", message: "internal error (see the dev console)" } });
    }
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end();
    },
  };
}
