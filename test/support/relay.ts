/** Starting relays in tests: in-process (a Relay object) or as the real CLI process. */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { RelayOptions } from "../../relay/config.ts";
import { createLogger } from "../../relay/log.ts";
import { Relay, type RelayEvents } from "../../relay/relay.ts";
import { waitUntil } from "./subscriber.ts";
import { TEST_SECRET } from "./worker.ts";

/** Fast settings so tests do not wait on defaults meant for production. */
export const FAST = { pollIntervalMs: 200, retryBaseMs: 20, retryMaxMs: 200, standbyPollMs: 100 } as const;

/** A Relay started in this process; stopped by the caller. */
export function startRelay(options: Partial<RelayOptions> & { databaseUrl: string; workerUrl: string }): Relay {
  const lines: string[] = [];
  const relay = new Relay({ ingestSecret: TEST_SECRET, ...FAST, ...options }, { logger: createLogger("info", (l) => lines.push(l)) });
  (relay as Relay & { logLines: string[] }).logLines = lines;
  relay.start();
  return relay;
}

/** Resolves on the relay's next `event` for which `check` holds. */
export function relayEvent<K extends keyof RelayEvents>(
  relay: Relay,
  event: K,
  check: (...args: RelayEvents[K]) => boolean = () => true,
  timeoutMs = 20_000,
): Promise<void> {
  let hit = false;
  return waitUntil(
    () => hit || undefined,
    (notify) => {
      const listener = (...args: RelayEvents[K]) => {
        if (check(...args)) {
          hit = true;
          notify();
        }
      };
      relay.on(event, listener as never);
      return () => relay.off(event, listener as never);
    },
    () => `relay event ${String(event)}`,
    timeoutMs,
  ).then(() => undefined);
}

/**
 * Resolves once the relay has delivered everything committed before the call: the second idle
 * after it comes from a read that began after the call (the first may come from one already under way).
 */
export async function caughtUp(relay: Relay): Promise<void> {
  await relayEvent(relay, "idle");
  await relayEvent(relay, "idle");
}

const CLI = fileURLToPath(new URL("../../dist/cli.js", import.meta.url));

/** A CLI process: its output, its exit, and a wait for a log line. */
export type CliProcess = ChildProcess & {
  output: () => string;
  exited: Promise<number | null>;
  /** Resolves when a JSON log line with this `msg` (or one of these) appears, counting from the start. */
  waitForLog: (msg: string | string[], timeoutMs?: number) => Promise<void>;
};

/** Runs the built CLI (the package's `bin`) with `env`; stderr and stdout are collected. */
export function spawnCli(args: string[], env: Record<string, string>): CliProcess {
  // Several relays run at once in some tests: none takes the default /metrics port unless asked.
  const child = spawn(process.execPath, [CLI, ...args], {
    env: { PATH: process.env.PATH ?? "", RELAY_HTTP: "off", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const listeners = new Set<() => void>();
  const onData = (d: Buffer) => {
    out += d;
    for (const l of [...listeners]) l();
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const waitForLog = (msg: string | string[], timeoutMs = 20_000) =>
    waitUntil(
      () => [msg].flat().some((m) => out.includes(`"msg":${JSON.stringify(m)}`)) || undefined,
      (notify) => {
        listeners.add(notify);
        return () => listeners.delete(notify);
      },
      () => `log line ${JSON.stringify(msg)} (output so far: ${out.slice(-500)})`,
      timeoutMs,
    ).then(() => undefined);
  return Object.assign(child, { output: () => out, exited, waitForLog });
}
