/**
 * Runs the Worker (workerd, through wrangler's unstable_startWorker) in a process of its own, so
 * the benchmark's writers and sockets do not share its event loop. Prints
 * `ready <public url> <direct url>`: the direct URL reaches the Worker without wrangler dev's
 * local proxy (a Durable Object every dev request queues through), as Cloudflare's edge routes
 * requests to a deployed Worker.
 *
 * Env: BINDINGS (JSON object of plain-text bindings).
 */
import { fileURLToPath } from "node:url";
import { unstable_startWorker } from "wrangler";

process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
process.env.WRANGLER_SEND_METRICS = "false";
const bindings = Object.fromEntries(
  Object.entries(JSON.parse(process.env.BINDINGS ?? "{}") as Record<string, string>).map(([k, value]) => [k, { type: "plain_text" as const, value }]),
);
const worker = await unstable_startWorker({
  config: fileURLToPath(new URL("../../wrangler.toml", import.meta.url)),
  bindings,
  // No file watcher: a benchmark measures one build (and esbuild's watcher has crashed on dispose).
  dev: { server: { hostname: "127.0.0.1", port: 0 }, inspector: false, persist: false, logLevel: "warn", watch: false } as never,
});
await worker.ready;
// The direct URL is only announced on a reload: ask for one (same bindings) and listen.
const raw = worker.raw as unknown as { on(event: "reloadComplete", listener: (e: { proxyData: { userWorkerUrl: { protocol: string; hostname: string; port: string } } }) => void): void };
const direct = await new Promise<string>((resolve) => {
  raw.on("reloadComplete", (e) => resolve(`${e.proxyData.userWorkerUrl.protocol}//${e.proxyData.userWorkerUrl.hostname}:${e.proxyData.userWorkerUrl.port}`));
  void worker.patchConfig({ bindings } as never);
});
process.stdout.write(`ready ${(await worker.url).toString().replace(/\/$/, "")} ${direct}\n`);
process.on("SIGTERM", async () => {
  await worker.dispose();
  process.exit(0);
});
