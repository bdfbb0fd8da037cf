/**
 * `npm run dev` as a test runs it: one process (as package.json's script runs it, so SIGTERM
 * reaches the stack's own handler), its output collected, waits on what it prints.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { waitUntil } from "./subscriber.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

export interface DevStack {
  child: ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  readonly output: string;
  /** Resolves with its exit code. */
  exited: Promise<number | null>;
  /** What `match` returns once it returns something, checked at each output; throws if the stack exits first. */
  until<T>(match: (output: string) => T | undefined, what: string, timeoutMs: number): Promise<T>;
  /** SIGKILL if still running, and its data directory removed. */
  cleanup(): void;
}

/** Starts scripts/dev.ts with `env` over this process's, its data in a fresh directory. */
export function startDevStack(env: NodeJS.ProcessEnv): DevStack {
  const dataDir = mkdtempSync(join(tmpdir(), "dev-stack-"));
  chmodSync(dataDir, 0o755); // as root, Postgres runs as the postgres user and must reach its data
  const child = spawn(process.execPath, ["--import", "tsx", join(root, "scripts/dev.ts")], {
    cwd: root,
    env: { ...process.env, DEV_DATA_DIR: dataDir, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const listeners = new Set<() => void>();
  const changed = () => {
    for (const l of listeners) l();
  };
  for (const stream of [child.stdout!, child.stderr!]) {
    stream.on("data", (d) => {
      output += d;
      changed();
    });
  }
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  child.on("exit", changed);
  return {
    child,
    get output() {
      return output;
    },
    exited,
    until: (match, what, timeoutMs) =>
      waitUntil(
        () => {
          if (child.exitCode !== null) throw new Error(`npm run dev exited ${child.exitCode}: ${output.slice(-800)}`);
          return match(output);
        },
        (n) => {
          listeners.add(n);
          return () => listeners.delete(n);
        },
        () => `${what} (output: ${output.slice(-800)})`,
        timeoutMs,
      ),
    cleanup() {
      child.kill("SIGKILL");
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
