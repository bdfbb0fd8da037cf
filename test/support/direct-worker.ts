/**
 * The real Worker (workerd through wrangler's unstable_startWorker), reached the way Cloudflare's
 * edge reaches a deployed one: for tests that measure the Worker under many connections at once.
 *
 * startTestWorker's URL is wrangler dev's local proxy, which queues every request through one
 * Durable Object of its own in another workerd; a few hundred WebSocket upgrades at once queue
 * there first. This one answers on the Worker's own address instead, without the two things only
 * local dev adds (as bench/lib/worker-process.ts does for the benchmarks): the trace collector
 * every request reports to (X_LOCAL_OBSERVABILITY) and the asset router of wrangler.toml's
 * [assets] (the demo page), through which every request passes locally.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { unstable_startWorker } from "wrangler";
import { type TestWorker, testBindings } from "./worker.ts";

/**
 * Starts the Worker with `vars` over wrangler.toml's [vars] (every channel public unless `vars`
 * says otherwise); storage in memory, or in `persistTo` (a Worker started again on it finds its
 * channels as they were). `url` is the Worker's own address.
 */
export async function startDirectWorker(vars: Record<string, string> = {}, options: { persistTo?: string } = {}): Promise<TestWorker> {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
  process.env.WRANGLER_SEND_METRICS = "false";
  process.env.X_LOCAL_OBSERVABILITY = "false";
  const bindings = testBindings(vars);
  const worker = await unstable_startWorker({
    config: configWithoutAssets(),
    bindings,
    dev: { server: { hostname: "127.0.0.1", port: 0 }, inspector: false, persist: options.persistTo ?? false, logLevel: "warn", watch: false } as never,
  });
  await worker.ready;
  // The Worker's own address is only announced on a reload: ask for one (same bindings) and listen.
  const raw = worker.raw as unknown as {
    once(event: "reloadComplete", listener: (e: { proxyData: { userWorkerUrl: { protocol: string; hostname: string; port: string } } }) => void): void;
  };
  const url = await new Promise<string>((resolve) => {
    raw.once("reloadComplete", (e) =>
      resolve(`${e.proxyData.userWorkerUrl.protocol}//${e.proxyData.userWorkerUrl.hostname}:${e.proxyData.userWorkerUrl.port}`),
    );
    void worker.patchConfig({ bindings } as never);
  });
  return { url, dispose: () => worker.dispose() };
}

/** wrangler.toml without its [assets] block, `main` made absolute, written to a fixed temporary path. */
function configWithoutAssets(): string {
  const root = fileURLToPath(new URL("../..", import.meta.url));
  const text = readFileSync(join(root, "wrangler.toml"), "utf8");
  const stripped = text
    .replace(/^\[assets\]\n(?:(?!\[).*\n)*/m, "")
    .replace(/^main = "([^"]+)"$/m, (_, path: string) => `main = ${JSON.stringify(join(root, path))}`);
  if (/^\[assets\]/m.test(stripped) || !/^main = "\//m.test(stripped))
    throw new Error("test/support/direct-worker.ts: wrangler.toml changed shape ([assets], main)");
  const dir = join(tmpdir(), "pg-edge-realtime-test-direct-wrangler");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, "wrangler.toml");
  writeFileSync(path, stripped);
  return path;
}
