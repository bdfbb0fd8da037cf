/**
 * A page on a network that refuses WebSockets (a proxy answering 403 to every upgrade) still shows
 * every event: client/ falls back to the channel's event stream by itself, across origins, and
 * resumes it when the network cuts the stream, nothing missed and nothing twice. Real Chromium.
 */
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { mintToken } from "../../token/index.ts";
import { type NoWebSocketProxy, startNoWebSocketProxy } from "../support/no-websocket-proxy.ts";
import { useStack } from "../support/stack.ts";
import { TEST_JWT_SECRET } from "../support/worker.ts";
import { launchChromium, servePage, type TestPage } from "./chromium.ts";

const stack = useStack({
  database: "sse",
  worker: { PUBLIC_CHANNELS: "" },
  setup: "create table notes (id int primary key, body text not null); select realtime.watch('notes')",
  relay: {},
});

let browser: Browser;
let page: TestPage;
let proxy: NoWebSocketProxy;

beforeAll(async () => {
  proxy = await startNoWebSocketProxy(stack.worker.url);
  page = await servePage(new URL("./sse-app.ts", import.meta.url), '<p id="transport"></p><p id="status"></p><ol id="events"></ol>');
  browser = await launchChromium();
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
    await tab.goto(`${page.url}/?host=${encodeURIComponent(proxy.host)}&channel=notes&token=${token}`);
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
