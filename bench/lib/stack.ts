/**
 * The systems under test, started once per benchmark run on this machine: one Postgres (embedded,
 * default durability: fsync and synchronous commit on, as in production), our Worker (workerd via
 * wrangler, in its own process: bench/lib/worker-process.ts), our relay (the CLI, its own process), and the baseline server (its own process).
 */
import { type ChildProcess, fork, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import type { RelaySource } from "../../relay/config.ts";
import { installSchema } from "../../relay/install.ts";
import { createDatabase, freePort, type PostgresHandle, startEmbedded } from "../../scripts/postgres.ts";
import type { ReceiverCommand, ReceiverReport } from "./receiver.ts";

/** The multi-statement scenario's shape (pgbench's TPC-B tables, smaller): rows per table. */
export const OLTP = { branches: 10, tellers: 100, accounts: 10_000 } as const;

/**
 * The multi-statement scenario's tables, three sets of the same three: `plain_*` (not watched),
 * `ours_*` (watched on channel 'oltp', captured as the relay's source says) and `seeds_*` (the
 * LISTEN design's per-row NOTIFY trigger).
 */
async function createOltpTables(db: pg.Client): Promise<void> {
  for (const set of ["plain", "ours", "seeds"]) {
    for (const [table, rows] of Object.entries(OLTP)) {
      const t = `${set}_${table}`;
      await db.query(`create table ${t} (id int primary key, bid int not null, balance int not null default 0, filler text not null default repeat(' ', 84))`);
      await db.query(`insert into ${t} (id, bid) select g, g % ${OLTP.branches} from generate_series(1, ${rows}) g`);
      if (set === "ours") await db.query("select realtime.watch($1, 'oltp')", [t]);
      if (set === "seeds") await db.query(`create trigger ${t}_notify after insert or update on ${t} for each row execute function bench_notify_row_change()`);
    }
  }
}

const root = fileURLToPath(new URL("../..", import.meta.url));
export const SECRET = "bench-ingest-secret-0123456789";

/** Columns shared by the three write targets: channel, writer, sequence, send time, padding. */
const TABLE = `(id bigint generated always as identity primary key, channel text not null, w int not null, n int not null, t0 float8 not null, pad text not null)`;

/**
 * Our Worker in a process of its own (bench/lib/worker-process.ts) with these plain-text
 * bindings; resolves with the process and the Worker's direct URL once it serves.
 */
export async function startWorkerProcess(bindings: Record<string, string>): Promise<{ process: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [join(root, "node_modules/tsx/dist/cli.mjs"), join(root, "bench/lib/worker-process.ts")], {
    env: { ...process.env, BINDINGS: JSON.stringify(bindings) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d;
      const m = /ready (\S+) (\S+)/.exec(out);
      if (m) resolve(m[2]!);
    });
    child.once("exit", (code) => reject(new Error(`worker process exited ${code}`)));
  });
  return { process: child, url };
}

/** Everything a scenario needs. */
export interface Stack {
  postgres: PostgresHandle;
  databaseUrl: string;
  workerUrl: string;
  baselineUrl: string;
  relay: ChildProcess;
  /** The source `relay` reads (and `startRelay` uses unless `env` says otherwise). */
  source: RelaySource;
  /** Stops the baseline server (its LISTEN connection goes with it). */
  stopBaseline(): Promise<void>;
  startBaseline(): Promise<void>;
  /** Starts another relay process (after the first was stopped), e.g. against another Worker URL. */
  startRelay(workerUrl: string, env?: Record<string, string>): ChildProcess;
  stop(): Promise<void>;
}

/** Starts everything; `log` gets one line per step. */
export async function startStack(log: (line: string) => void, source: RelaySource = "outbox"): Promise<Stack> {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
  process.env.WRANGLER_SEND_METRICS = "false";
  const postgres = await startEmbedded({ dataDir: join(tmpdir(), `pg-edge-realtime-bench-${Date.now()}`) });
  const { url: databaseUrl } = await createDatabase(postgres.url, "bench");
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  await installSchema(db);
  await db.query(`create table bench_plain ${TABLE}`);
  await db.query(`create table bench_ours ${TABLE}`);
  // Routed by a column outside the key: decoded from a publication, a change then needs the whole
  // old row in the WAL (inserts, all this table sees, are logged the same either way).
  await db.query("alter table bench_ours replica identity full");
  await db.query("select realtime.watch('bench_ours', '{channel}')");

  await db.query(`create table bench_seeds ${TABLE}`);
  await db.query(readFileSync(join(root, "bench/baseline/schema.sql"), "utf8"));
  await db.query("create trigger bench_seeds_notify after insert on bench_seeds for each row execute function bench_notify_data_change()");
  await createOltpTables(db);
  await db.end();
  log(`postgres ready (${databaseUrl.replace(/:[^:@/]+@/, ":***@")})`);

  const { process: workerProcess, url: workerUrl } = await startWorkerProcess({
    INGEST_SECRET: SECRET,
    PUBLIC_CHANNELS: "*",
    MAX_SOCKETS_PER_CHANNEL: "32768",
  });
  log(`worker ready (${workerUrl}, direct)`);

  // Read at each start: the writer scenario switches the source and back.
  const current = { source };
  const startRelay = (url: string, env: Record<string, string> = {}) =>
    // Run through its shebang, as `npx pg-edge-realtime relay` does (it sets V8 flags).
    spawn(join(root, "dist/cli.js"), ["relay"], {
      env: {
        PATH: process.env.PATH ?? "",
        DATABASE_URL: databaseUrl,
        WORKER_URL: url,
        INGEST_SECRET: SECRET,
        LOG_LEVEL: "warn",
        RELAY_HTTP: "off",
        RELAY_SOURCE: current.source,
        ...env,
      },
      stdio: ["ignore", "inherit", "inherit"],
    });

  const baselinePort = await freePort();
  let baseline: ChildProcess;
  const startBaseline = async () => {
    baseline = spawn(process.execPath, [join(root, "node_modules/tsx/dist/cli.mjs"), join(root, "bench/baseline/server.ts")], {
      env: { PATH: process.env.PATH ?? "", DATABASE_URL: databaseUrl, PORT: String(baselinePort) },
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise<void>((resolve, reject) => {
      baseline.stdout!.on("data", (d: Buffer) => d.toString().includes("listening") && resolve());
      baseline.once("exit", (code) => reject(new Error(`baseline server exited ${code}`)));
    });
  };
  await startBaseline();
  log(`baseline ready (ws://127.0.0.1:${baselinePort})`);

  const relay = startRelay(workerUrl);
  const stack: Stack = {
    postgres,
    databaseUrl,
    workerUrl,
    baselineUrl: `ws://127.0.0.1:${baselinePort}`,
    relay,
    get source() {
      return current.source;
    },
    set source(value) {
      current.source = value;
    },
    startRelay,
    stopBaseline: () =>
      new Promise<void>((resolve) => {
        baseline.removeAllListeners("exit");
        baseline.once("exit", () => resolve());
        baseline.kill("SIGTERM");
      }),
    startBaseline,
    async stop() {
      baseline.kill("SIGTERM");
      stack.relay.kill("SIGTERM");
      workerProcess.removeAllListeners("exit");
      await new Promise<void>((resolve) => {
        workerProcess.once("exit", () => resolve());
        workerProcess.kill("SIGTERM");
      });
      await postgres.stop();
    },
  };
  return stack;
}

/** The subscriber process (bench/lib/receiver.ts), driven by request/response over IPC. */
export class Receivers {
  private readonly child = fork(join(root, "bench/lib/receiver.ts"), [], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });

  private call<T = unknown>(command: ReceiverCommand): Promise<T> {
    return new Promise((resolve, reject) => {
      this.child.once("message", (m: { ok: boolean; error?: string } & T) => (m.ok ? resolve(m) : reject(new Error(m.error))));
      this.child.send(command);
    });
  }

  /** Opens `perChannel` sockets on each channel (the first `probes` of each parse every event). */
  async connect(system: "ours" | "baseline", base: string, channels: string[], perChannel: number, probesPerChannel = 1): Promise<void> {
    await this.call({ cmd: "connect", system, base, channels, perChannel, probesPerChannel });
  }

  async reset(): Promise<void> {
    await this.call({ cmd: "reset" });
  }

  /** Waits until every socket has its channel's count (or nothing arrives for `stallMs`); reports. */
  async wait(expectPerChannel: Record<string, number>, stallMs = 15_000): Promise<ReceiverReport> {
    return (await this.call<{ report: ReceiverReport }>({ cmd: "wait", expectPerChannel, stallMs })).report;
  }

  async close(): Promise<void> {
    await this.call({ cmd: "close" });
    this.child.kill();
  }
}

/** Resident set size of a process, in MB (from /proc). */
export function rssMb(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}
