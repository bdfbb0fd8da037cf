/** The real Worker (workerd through wrangler's unstable_startWorker), one per test file. */
import { fileURLToPath } from "node:url";
import { unstable_startWorker } from "wrangler";

/** The ingest secret every test Worker and relay share. */
export const TEST_SECRET = "test-secret-0123456789abcdef";
/** The JWT secret of test Workers (HS256 browser tokens). */
export const TEST_JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef";

/** A running Worker: its base URL (http://127.0.0.1:<port>) and how to stop it. */
export interface TestWorker {
  url: string;
  dispose(): Promise<void>;
}

/** The test secrets and every channel public, then `vars`, as wrangler's plain-text bindings. */
export function testBindings(vars: Record<string, string>): Record<string, { type: "plain_text"; value: string }> {
  return Object.fromEntries(
    Object.entries({ INGEST_SECRET: TEST_SECRET, JWT_SECRET: TEST_JWT_SECRET, PUBLIC_CHANNELS: "*", ...vars }).map(([k, value]) => [
      k,
      { type: "plain_text" as const, value },
    ]),
  );
}

/**
 * Starts the Worker from wrangler.toml with in-memory storage; `vars` override [vars]. Every
 * channel is public unless `vars` says otherwise (PUBLIC_CHANNELS), so tests about delivery need
 * no tokens; the authentication tests set their own.
 */
export async function startTestWorker(vars: Record<string, string> = {}, options: { persistTo?: string } = {}): Promise<TestWorker> {
  process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
  process.env.WRANGLER_SEND_METRICS = "false";
  const bindings = testBindings(vars);
  const worker = await unstable_startWorker({
    config: fileURLToPath(new URL("../../wrangler.toml", import.meta.url)),
    bindings,
    // `persist: false` keeps Durable Object storage in memory: each Worker starts empty, unless
    // `persistTo` names a directory (a restarted Worker then finds its channels as they were).
    dev: { server: { hostname: "127.0.0.1", port: 0 }, inspector: false, persist: options.persistTo ?? false, logLevel: "warn" } as never,
  });
  await worker.ready;
  const url = (await worker.url).toString().replace(/\/$/, "");
  return { url, dispose: () => worker.dispose() };
}
