/**
 * The one way a test file starts the parts it needs: a database, the Worker, a relay between them,
 * a fault proxy on the relay's way to the Worker and a TCP proxy on the clients' way. `useStack`
 * registers the file's beforeAll and afterAll and returns the stack, whose parts are there once the
 * tests run:
 *
 *   const stack = useStack({ database: "features", worker: { PUBLIC_CHANNELS: "" }, clientProxy: true, relay: {} });
 *   it("...", async () => { await stack.db.sql("..."); ... });
 *
 * Parts are torn down in the reverse order (relay first, so it never posts to a closed Worker).
 */
import { afterAll, beforeAll } from "vitest";
import type { RelayOptions } from "../../relay/config.ts";
import type { Relay } from "../../relay/relay.ts";
import { type TestDatabase, testDatabase } from "./db.ts";
import { type FaultProxy, startFaultProxy } from "./fault-proxy.ts";
import { relayEvent, startRelay } from "./relay.ts";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.ts";
import { startTestWorker, type TestWorker } from "./worker.ts";

/** What a test file needs; each part is left out unless asked for. */
export interface StackOptions {
  /** A database of its own (the name is a prefix: each file gets a fresh one), with realtime installed. */
  database?: string;
  /** The Worker, with these variables over wrangler.toml's (every channel public unless PUBLIC_CHANNELS says otherwise). */
  worker?: Record<string, string>;
  /** SQL run once the database is up, before the relay starts. */
  setup?: string;
  /** A fault proxy between the relay and the Worker (`stack.ingestProxy`), where the relay posts. */
  ingestProxy?: boolean;
  /** A TCP proxy clients connect through (`stack.net.host`), to cut their connections. */
  clientProxy?: boolean;
  /** A relay from the database to the Worker (through the ingest proxy if any), with these options; started and idle before the tests. */
  relay?: Partial<RelayOptions>;
}

/** The parts a file asked for (the others are absent: reading them throws). */
export interface Stack {
  readonly db: TestDatabase;
  readonly worker: TestWorker;
  relay: Relay;
  readonly ingestProxy: FaultProxy;
  readonly net: TcpProxy;
  /** Where a relay of this stack posts: the ingest proxy, else the Worker. */
  readonly ingestUrl: string;
}

/** Registers the file's set-up and tear-down of the parts in `options`; returns the stack they fill. */
export function useStack(options: StackOptions): Stack {
  const parts: { db?: TestDatabase; worker?: TestWorker; relay?: Relay; ingestProxy?: FaultProxy; net?: TcpProxy } = {};
  const part = <K extends keyof typeof parts>(name: K) => {
    const value = parts[name];
    if (value === undefined) throw new Error(`this file's stack has no ${name}: ask useStack for it`);
    return value as NonNullable<(typeof parts)[K]>;
  };
  const stack: Stack = {
    get db() {
      return part("db");
    },
    get worker() {
      return part("worker");
    },
    get relay() {
      return part("relay");
    },
    /** A test may replace the relay (after stopping it); the stack stops the one it holds at the end. */
    set relay(relay: Relay) {
      parts.relay = relay;
    },
    get ingestProxy() {
      return part("ingestProxy");
    },
    get net() {
      return part("net");
    },
    get ingestUrl() {
      return parts.ingestProxy?.url ?? part("worker").url;
    },
  };

  beforeAll(async () => {
    const [db, worker] = await Promise.all([
      options.database === undefined ? undefined : testDatabase(options.database),
      options.worker === undefined ? undefined : startTestWorker(options.worker),
    ]);
    parts.db = db;
    parts.worker = worker;
    if (options.setup !== undefined) await stack.db.sql(options.setup);
    if (options.ingestProxy) parts.ingestProxy = await startFaultProxy(stack.worker.url);
    if (options.clientProxy) parts.net = await startTcpProxy(stack.worker.url);
    if (options.relay !== undefined) {
      parts.relay = startRelay({ databaseUrl: stack.db.url, workerUrl: stack.ingestUrl, ...options.relay });
      await relayEvent(parts.relay, "idle");
    }
  });

  afterAll(async () => {
    await parts.relay?.stop();
    await parts.net?.close();
    await parts.ingestProxy?.close();
    await Promise.allSettled([parts.worker?.dispose(), parts.db?.drop()]);
  });

  return stack;
}
