/**
 * client/react's useChannel in real Chromium (React 19, bundled by esbuild): the retained rows
 * render from the snapshot, then follow inserts, updates and deletes typed into Postgres.
 */
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { mintToken } from "../../token/index.ts";
import { caughtUp } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TEST_JWT_SECRET } from "../support/worker.ts";
import { launchChromium, servePage, type TestPage } from "./chromium.ts";

let browser: Browser;
let page: TestPage;

const stack = useStack({
  database: "react",
  worker: { PUBLIC_CHANNELS: "" },
  setup: `
    create table items (id int primary key, title text not null); insert into items values (1, 'from the snapshot');
    select realtime.watch('items', retain => true); select realtime.backfill('items');
    create table big_items (id bigint primary key, title text not null); select realtime.watch('big_items', retain => true);`,
  relay: {},
});

beforeAll(async () => {
  await caughtUp(stack.relay);
  page = await servePage(new URL("./react-app.tsx", import.meta.url), '<div id="root"></div>', {
    jsx: "automatic",
    define: { "process.env.NODE_ENV": '"production"' },
  });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  page?.close();
});

it("renders the channel's rows from the snapshot and keeps them current as rows change", async () => {
  const tab = await browser.newPage();
  const errors: string[] = [];
  tab.on("pageerror", (e) => errors.push(e.message));
  try {
    const token = await mintToken({ secret: TEST_JWT_SECRET, sub: "react", channels: ["items"] });
    await tab.goto(`${page.url}/?host=${encodeURIComponent(new URL(stack.worker.url).host)}&token=${token}`);
    await tab.locator("#status", { hasText: "open" }).waitFor();
    await tab.locator("#rows li", { hasText: "from the snapshot" }).waitFor();

    await stack.db.sql("insert into items values (2, 'inserted'), (3, 'to delete')");
    await tab.locator("#rows li", { hasText: "inserted" }).waitFor();
    await stack.db.sql("update items set title = 'updated' where id = 1");
    await stack.db.sql("delete from items where id = 3");
    await tab.locator("#rows li", { hasText: "updated" }).waitFor();
    await tab.locator("#rows li", { hasText: "to delete" }).waitFor({ state: "detached" });
    expect(await tab.locator("#rows li").allTextContents()).toEqual(["updated", "inserted"]);
    expect(await tab.locator("#events").textContent()).toBe("4");
    expect(errors).toEqual([]);
  } finally {
    await tab.close();
  }
});

it("shows an empty retained channel as no rows (not loading), an id past 2^53 digit for digit, and a row too large to retain by its key", async () => {
  const tab = await browser.newPage();
  const errors: string[] = [];
  tab.on("pageerror", (e) => errors.push(e.message));
  const token = await mintToken({ secret: TEST_JWT_SECRET, sub: "react-big", channels: ["big_items"] });
  const url = `${page.url}/?host=${encodeURIComponent(new URL(stack.worker.url).host)}&token=${token}&channel=big_items`;
  try {
    await tab.goto(url);
    await tab.locator("#status", { hasText: "open" }).waitFor();
    // The channel has never received a row: its state is empty, not loading.
    await tab.locator("#count", { hasText: "0" }).waitFor();

    await stack.db.sql("insert into big_items values (9007199254740993, 'exact id'), (9007199254740992, 'its neighbour')");
    await tab.locator("#count", { hasText: "2" }).waitFor();
    expect(
      await tab.locator("#rows li").evaluateAll((lis) => lis.map((li) => [li.getAttribute("data-id"), li.getAttribute("data-type"), li.textContent])),
    ).toEqual([
      ["9007199254740992", "string", "its neighbour"],
      ["9007199254740993", "string", "exact id"],
    ]);
    // Over STATE_MAX_ROW_BYTES (1 MiB): retained as its key alone, for live and joining clients alike.
    await stack.db.sql("insert into big_items values (7, repeat('x', 1100000))");
    await tab.locator("#oversized li", { hasText: "7" }).waitFor();
    expect(await tab.locator("#count").textContent()).toBe("2");

    await tab.reload();
    await tab.locator("#status", { hasText: "open" }).waitFor();
    await tab.locator("#oversized li", { hasText: "7" }).waitFor();
    expect(await tab.locator("#rows li").evaluateAll((lis) => lis.map((li) => li.getAttribute("data-id")))).toEqual(["9007199254740992", "9007199254740993"]);
    expect(errors).toEqual([]);
  } finally {
    await tab.close();
  }
});
