/**
 * A page on a network that refuses WebSockets (a proxy answering 403 to every upgrade) still shows
 * every event: client/ falls back to the channel's event stream by itself, across origins, and
 * resumes it when the network cuts the stream, nothing missed and nothing twice. Real Chromium.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { mintToken } from "../../token/index.ts";
import { type NoWebSocketProxy, startNoWebSocketProxy } from "../support/no-websocket-proxy.ts";
import { useStack } from "../support/stack.ts";
import { TEST_JWT_SECRET } from "../support/worker.ts";
import { CHROMIUM, CHROMIUM_ARGS } from "./chromium.ts";

const stack = useStack({
  database: "sse",
  worker: { PUBLIC_CHANNELS: "" },
  setup: "create table notes (id int primary key, body text not null); select realtime.watch('notes')",
  relay: {},
});

let browser: Browser;
let page: Server;
let pageUrl: string;
let proxy: NoWebSocketProxy;

beforeAll(async () => {
  proxy = await startNoWebSocketProxy(stack.worker.url);
  const bundle = await build({
    entryPoints: [new URL("./sse-app.ts", import.meta.url).pathname],
    bundle: true,
    write: false,
    format: "esm",
    logLevel: "warning",
  });
  const js = bundle.outputFiles[0]!.text;
  page = createServer((req, res) => {
    if (req.url?.startsWith("/app.js")) return void res.writeHead(200, { "Content-Type": "text/javascript" }).end(js);
    res
      .writeHead(200, { "Content-Type": "text/html" })
      .end('<!doctype html><p id="transport"></p><p id="status"></p><ol id="events"></ol><script type="module" src="/app.js"></script>');
  });
  await new Promise<void>((resolve) => page.listen(0, "127.0.0.1", resolve));
  pageUrl = `http://127.0.0.1:${(page.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

afterAll(async () => {
  await browser?.close();
  page?.close();
  await proxy?.close();
});

it("falls back to the event stream when every WebSocket is refused, shows every event, and resumes after a cut", async () => {
  const token = await mintToken({ secret: TEST_JWT_SECRET, sub: "behind-a-proxy", channels: ["notes"] });
  const tab = await browser.newPage();
  try {
    await tab.goto(`${pageUrl}/?host=${encodeURIComponent(proxy.host)}&channel=notes&token=${token}`);
    await tab.locator("#status", { hasText: "open" }).waitFor();
    expect(await tab.locator("#transport").textContent()).toBe("sse");
    // It tried the WebSocket first, three times, before falling back.
    expect(proxy.refusedUpgrades).toBeGreaterThanOrEqual(3);
    for (let i = 1; i <= 5; i++) await stack.db.sql("insert into notes values ($1, $2)", [i, `note ${i}`]);
    await tab.locator("#events li").nth(4).waitFor();
    // The network drops the stream while rows keep coming: the client resumes from its own seq.
    proxy.cut();
    for (let i = 6; i <= 10; i++) await stack.db.sql("insert into notes values ($1, $2)", [i, `note ${i}`]);
    await tab.locator("#events li").nth(9).waitFor();
    await tab.locator("#status", { hasText: "open" }).waitFor();
    // Two streams at least: the first, cut, and the one that resumed.
    expect(proxy.passed).toBeGreaterThanOrEqual(2);
    const seqs = await tab.locator("#events li").evaluateAll((items) => items.map((li) => Number((li as HTMLElement).dataset.seq)));
    expect(seqs).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    const bodies = await tab.locator("#events li").allTextContents();
    expect(bodies.map((b) => (JSON.parse(b) as { new: { body: string } }).new.body)).toEqual(Array.from({ length: 10 }, (_, i) => `note ${i + 1}`));
  } finally {
    await tab.close();
  }
});
