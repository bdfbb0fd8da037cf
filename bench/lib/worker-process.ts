/**
 * Runs the Worker (workerd, through wrangler's unstable_startWorker) in a process of its own, so
 * the benchmark's writers and sockets do not share its event loop. Prints
 * `ready <public url> <direct url>`: the direct URL reaches the Worker without wrangler dev's
 * local proxy (a Durable Object every dev request queues through), as Cloudflare's edge routes
 * requests to a deployed Worker.
 *
 * Two more things wrangler dev adds locally, and a deployed Worker does not run, are left out,
 * because on this machine they cost more CPU than the Worker itself (workerd's CPU time from
 * /proc, see docs/benchmarks.md: a one-event ingest took 4.8 ms of it with both, 1.9 ms without):
 * - local observability (X_LOCAL_OBSERVABILITY): a trace collector Worker that receives every
 *   request's and every Durable Object call's tail events, for wrangler's local explorer;
 * - the [assets] block of wrangler.toml (the demo page): locally, every request first passes
 *   through an asset router Worker in the same workerd, even those that `run_worker_first`
 *   sends straight to the Worker. The benchmark never asks for the demo page.
 *
 * Env: BINDINGS (JSON object of plain-text bindings).
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { unstable_startWorker } from "wrangler";

process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
process.env.WRANGLER_SEND_METRICS = "false";
process.env.X_LOCAL_OBSERVABILITY = "false";
const bindings = Object.fromEntries(
  Object.entries(JSON.parse(process.env.BINDINGS ?? "{}") as Record<string, string>).map(([k, value]) => [k, { type: "plain_text" as const, value }]),
);
const worker = await unstable_startWorker({
  config: configWithoutAssets(),
  bindings,
  // No file watcher: a benchmark measures one build (and esbuild's watcher has crashed on dispose).
  dev: { server: { hostname: "127.0.0.1", port: 0 }, inspector: false, persist: false, logLevel: "warn", watch: false } as never,
});
await worker.ready;
// The direct URL is only announced on a reload: ask for one (same bindings) and listen.
const raw = worker.raw as unknown as {
  on(event: "reloadComplete", listener: (e: { proxyData: { userWorkerUrl: { protocol: string; hostname: string; port: string } } }) => void): void;
};
const direct = await new Promise<string>((resolve) => {
  raw.on("reloadComplete", (e) => resolve(`${e.proxyData.userWorkerUrl.protocol}//${e.proxyData.userWorkerUrl.hostname}:${e.proxyData.userWorkerUrl.port}`));
  void worker.patchConfig({ bindings } as never);
});
process.stdout.write(`ready ${(await worker.url).toString().replace(/\/$/, "")} ${direct}\n`);
process.on("SIGTERM", async () => {
  await worker.dispose();
  process.exit(0);
});

/**
 * wrangler.toml without its [assets] block (up to the next table header), its `main` made
 * absolute, written to one fixed temporary path (every run writes the same text). Throws if
 * the file no longer has the shape this expects, rather than benchmarking a different Worker.
 */
function configWithoutAssets(): string {
  const root = fileURLToPath(new URL("../..", import.meta.url));
  const text = readFileSync(join(root, "wrangler.toml"), "utf8");
  let main = false;
  const stripped = text.replace(/^\[assets\]\n(?:(?!\[).*\n)*/m, "").replace(/^main = "([^"]+)"$/m, (_, path: string) => {
    main = true;
    return `main = ${JSON.stringify(join(root, path))}`;
  });
  if (main === false || /^\[assets\]/m.test(stripped) || !/^\[\[durable_objects\.bindings\]\]/m.test(stripped)) {
    throw new Error("bench/lib/worker-process.ts: wrangler.toml changed shape (main, [assets], Durable Objects); update configWithoutAssets()");
  }
  const dir = join(tmpdir(), "pg-edge-realtime-bench-wrangler");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, "wrangler.toml");
  writeFileSync(path, stripped);
  return path;
}
