/** Debian's Chromium (`apt-get install chromium`), as the browser tests launch it, and the pages they open. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type BuildOptions, build } from "esbuild";
import { type Browser, chromium } from "playwright-core";

/** Its path; CHROMIUM_PATH overrides. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/**
 * Flags from the machine notes: without the background-networking ones Chromium tries Google's
 * hosts, which this closed network refuses. Playwright gives it a fresh profile.
 */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** A page served locally: `entry` bundled by esbuild as /app.js, below `body`. */
export interface TestPage {
  url: string;
  close(): void;
}

/** Bundles `entry` (a path beside the test, esbuild options added) and serves it under `body` on a local port. */
export async function servePage(entry: URL, body: string, options: Pick<BuildOptions, "jsx" | "define"> = {}): Promise<TestPage> {
  const bundle = await build({ entryPoints: [entry.pathname], bundle: true, write: false, format: "esm", logLevel: "warning", ...options });
  const js = bundle.outputFiles[0]!.text;
  const server = createServer((req, res) => {
    if (req.url?.startsWith("/app.js")) return void res.writeHead(200, { "Content-Type": "text/javascript" }).end(js);
    res.writeHead(200, { "Content-Type": "text/html" }).end(`<!doctype html>${body}<script type="module" src="/app.js"></script>`);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

/** Chromium, launched as the browser tests launch it. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}
