#!/usr/bin/env -S node --max-semi-space-size=2
/**
 * The shebang caps V8's young generation at 2 MB: a draining relay makes short-lived garbage fast,
 * and a small young generation is collected before it grows, so the relay's memory stays lower at
 * the same drain rate (docs/benchmarks.md has the figures).
 *
 * `pg-edge-realtime relay|install|backfill|init|token`: the relay's command line. Every option is a flag and an
 * environment variable (the flag wins); bad configuration exits 2 with one line saying what to fix.
 */
import pg from "pg";
import { mintToken } from "../token/index.ts";
import { optionsFromArgs, tokenArgs, USAGE } from "./args.ts";
import { RelayConfigError } from "./config.ts";
import { initProject } from "./init.ts";
import { installSchema } from "./install.ts";
import { createLogger, redactUrl } from "./log.ts";
import { type ObservabilityServer, serveObservability } from "./observe.ts";
import { requireOption, resolveRelayOptions } from "./options.ts";
import { Relay } from "./relay.ts";

/** Installs the schema; returns the capture mode to recommend for this Postgres, in a sentence. */
async function install(databaseUrl: string): Promise<string> {
  const db = new pg.Client({ connectionString: databaseUrl });
  try {
    await db.connect();
  } catch (err) {
    throw new RelayConfigError(`cannot connect to ${redactUrl(databaseUrl)}: ${(err as Error).message}`);
  }
  try {
    await installSchema(db);
    const { rows } = await db.query<{ wal_level: string; capture: string }>(
      "select current_setting('wal_level') as wal_level, capture from realtime.installation",
    );
    const { wal_level: level, capture } = rows[0]!;
    return level === "logical"
      ? `capture is '${capture}'; this Postgres has wal_level = logical, so run the relay with --source publication to capture without triggers (writers pay nothing; see the README's capture modes)`
      : `capture is '${capture}'; this Postgres has wal_level = ${level}, so the outbox (the default) is the capture it supports (--source wal and publication need wal_level = logical)`;
  } finally {
    await db.end();
  }
}

/**
 * `backfill <table>`: realtime.backfill_page until done, with a progress line (rewritten in place
 * on a terminal, one line per 10% otherwise) and a summary.
 */
async function backfill(databaseUrl: string | undefined, table: string | undefined, pageSize: number): Promise<void> {
  if (!table) throw new RelayConfigError("backfill needs a table: pg-edge-realtime backfill <schema.table>");
  const url = requireOption("databaseUrl", databaseUrl);
  const db = new pg.Client({ connectionString: url });
  await db.connect().catch((err: Error) => {
    throw new RelayConfigError(`cannot connect to ${redactUrl(url)}: ${err.message}`);
  });
  try {
    const { rows } = await db
      .query<{ total: string }>(
        `select count(*) as total from ${table
          .split(".")
          .map((p) => pg.escapeIdentifier(p))
          .join(".")}`,
      )
      .catch((err: Error) => {
        throw new RelayConfigError(`cannot read ${table}: ${err.message}`);
      });
    const total = Number(rows[0]!.total);
    const started = performance.now();
    const tty = process.stderr.isTTY;
    let done = 0;
    let lastDecile = -1;
    let after: unknown = null;
    for (;;) {
      const page = await db.query<{ last_key: unknown; written: string }>("select last_key, written from realtime.backfill_page($1::regclass, $2::json, $3)", [
        table,
        after === null ? null : JSON.stringify(after),
        pageSize,
      ]);
      after = page.rows[0]!.last_key;
      if (after === null) break;
      done += Number(page.rows[0]!.written);
      const pct = total === 0 ? 100 : Math.floor((done / total) * 100);
      const rate = done / ((performance.now() - started) / 1000);
      const line = `backfill ${table}: ${done.toLocaleString("en-US")} of ${total.toLocaleString("en-US")} rows (${pct}%), ${Math.round(rate).toLocaleString("en-US")} rows/s`;
      if (tty) process.stderr.write(`\r${line}`);
      else if (Math.floor(pct / 10) > lastDecile) {
        lastDecile = Math.floor(pct / 10);
        process.stderr.write(`${line}\n`);
      }
    }
    const seconds = (performance.now() - started) / 1000;
    process.stderr.write(
      `${tty ? "\r" : ""}backfill ${table}: done, ${done.toLocaleString("en-US")} rows written to the outbox in ${seconds.toFixed(1)} s; the relay delivers them in order with live changes\n`,
    );
  } finally {
    await db.end();
  }
}

/** `init [dir]`: what initProject did, and what is left to do. */
function init(dir: string): void {
  const report = initProject(dir);
  const lines = [
    ...report.created.map((f) => `created   ${f}`),
    ...report.appended.map((f) => `appended  ${f} (the CHANNEL and SHARD Durable Objects and their migration)`),
    ...report.unchanged.map((f) => `unchanged ${f}`),
    "",
    "Next:",
    ...report.todo.map((t) => `- ${t}`),
    "",
  ];
  process.stdout.write(lines.join("\n"));
}

async function main(): Promise<void> {
  if (process.argv[2] === "token") {
    const args = tokenArgs(process.argv.slice(3), process.env);
    process.stdout.write(`${await mintToken({ secret: args.secret, sub: args.sub, channels: args.channels, ttlSeconds: args.ttlSeconds })}\n`);
    return;
  }
  const { command, operand, options, install: installFirst, help, http } = optionsFromArgs(process.argv.slice(2), process.env);
  if (help) {
    process.stdout.write(USAGE);
    return;
  }
  if (command === "backfill") return backfill(options.databaseUrl, operand, 1000);
  if (command === "init") return init(operand ?? ".");
  if (command === "install") {
    const databaseUrl = requireOption("databaseUrl", options.databaseUrl);
    const recommendation = await install(databaseUrl);
    process.stderr.write(`realtime schema installed in ${redactUrl(databaseUrl)}\n${recommendation}\n`);
    return;
  }
  const resolved = resolveRelayOptions(options);
  if (installFirst) await install(resolved.databaseUrl);
  const logger = createLogger(resolved.logLevel);
  const relay = new Relay(resolved, { logger });
  let observability: ObservabilityServer | null = null;
  if (http) {
    try {
      observability = await serveObservability(relay, http.host, http.port);
    } catch (err) {
      throw new RelayConfigError(
        `cannot serve /metrics on ${http.host}:${http.port} (${(err as Error).message}): choose another --http host:port, or --http off`,
      );
    }
    logger.info("observability", { url: observability.url, paths: ["/healthz", "/readyz", "/metrics"] });
  }
  let signals = 0;
  const shutdown = (signal: string) => {
    if (++signals > 1) process.exit(1);
    logger.info("stopping", { signal });
    void relay
      .stop()
      .then(() => observability?.close())
      .then(() => process.exit(0));
  };
  // The Worker refuses this relay's secret or URL: no retry can help, so the process fails (a
  // supervisor shows it) with what to fix.
  relay.once("failed", (err) => {
    process.stderr.write(`pg-edge-realtime: ${err.message}\n`);
    void Promise.resolve(observability?.close()).finally(() => process.exit(3));
  });
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  relay.start();
}

main().catch((err: unknown) => {
  if (err instanceof RelayConfigError) {
    process.stderr.write(`pg-edge-realtime: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`pg-edge-realtime: ${(err as Error).message}\n`);
  process.exit(1);
});
