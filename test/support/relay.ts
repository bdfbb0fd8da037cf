/** Starting relays in tests: in-process (a Relay object) or as the real CLI process. */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createLogger } from "../../relay/log.ts";
import { Relay, type RelayEvents } from "../../relay/relay.ts";
import type { RelayOptions } from "../../relay/config.ts";
import { TEST_SECRET } from "./worker.ts";
import { waitUntil } from "./subscriber.ts";

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
export function relayEvent<K extends keyof RelayEvents>(relay: Relay, event: K, check: (...args: RelayEvents[K]) => boolean = () => true, timeoutMs = 20_000): Promise<void> {
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

const CLI = fileURLToPath(new URL("../../dist/cli.js", import.meta.url));

/** Runs the built CLI (the package's `bin`) with `env`; stderr and stdout are collected. */
export function spawnCli(args: string[], env: Record<string, string>): ChildProcess & { output: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return Object.assign(child, { output: () => out, exited });
}
