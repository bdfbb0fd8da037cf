/**
 * The demo page in real Chromium (Debian's, driven by playwright-core), served by the real Worker,
 * fed by the real relay from a real Postgres: a row inserted with SQL appears on the page, and the
 * page's own form makes the round trip through the edge.
 */

import type { Browser } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type DemoApi, startDemoApi, TODOS_DDL } from "../../scripts/demo-api.ts";
import { useStack } from "../support/stack.ts";
import { TEST_JWT_SECRET } from "../support/worker.ts";
import { launchChromium } from "./chromium.ts";

let api: DemoApi;
let browser: Browser;

// As in `npm run dev`: todos is private (the page joins with a token), a row that existed before,
// then watch with retain and backfill.
const stack = useStack({
  database: "browser",
  worker: { PUBLIC_CHANNELS: "" },
  setup: `${TODOS_DDL};
    insert into todos (title) values ('already there');
    select realtime.watch('todos', retain => true);
    select realtime.backfill('todos');`,
  relay: {},
});

beforeAll(async () => {
  api = await startDemoApi(stack.db.url, 0, { jwtSecret: TEST_JWT_SECRET });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await api?.close();
});

it("joins the private todos channel with a token, shows the retained rows, rows changed with SQL live, and the form's todo after its round trip", async () => {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  try {
    await page.goto(`${stack.worker.url}/?api=${encodeURIComponent(api.url)}`);
    await page.locator('#status[data-status="open"]').waitFor();
    // Current rows come from the channel's retained state (the snapshot), not from the database.
    await page.locator("#rows tr", { hasText: "already there" }).waitFor();

    await stack.db.sql("insert into todos (title) values ('typed into psql')");
    const row = page.locator("#rows tr", { hasText: "typed into psql" });
    await row.waitFor();
    await expect(row.locator("td").nth(2).textContent()).resolves.toBe("no");

    await stack.db.sql("update todos set done = true where title = 'typed into psql'");
    await page.locator("#rows tr", { hasText: "typed into psql" }).locator("td", { hasText: "yes" }).waitFor();

    await stack.db.sql("delete from todos where title = 'already there'");
    await page.locator("#rows tr", { hasText: "already there" }).waitFor({ state: "detached" });

    // The recent-changes list shows each operation.
    const changes = await page.locator("#changes li").allTextContents();
    expect(changes.slice(0, 3).map((t) => t.split(" ")[0])).toEqual(["DELETE", "UPDATE", "INSERT"]);

    // The form writes through the demo API; the row appears only via the edge.
    await page.fill("#title", "added from the page");
    await page.click('#add button[type="submit"]');
    await page.locator("#rows tr", { hasText: "added from the page" }).waitFor();
    const inDb = await stack.db.sql("select title from todos where title = 'added from the page'");
    expect(inDb).toHaveLength(1);
    expect(errors).toEqual([]);
  } finally {
    await page.close();
  }
});

it("shows who else is watching, and a wave (a client broadcast) from another tab", async () => {
  const [first, second] = [await browser.newPage(), await browser.newPage()];
  try {
    await first.goto(`${stack.worker.url}/?api=${encodeURIComponent(api.url)}`);
    await first.locator("#watching", { hasText: "1" }).waitFor();
    await second.goto(`${stack.worker.url}/?api=${encodeURIComponent(api.url)}`);
    await first.locator("#watching", { hasText: "2" }).waitFor();
    await second.locator("#watching", { hasText: "2" }).waitFor();
    expect(await first.locator("#members li", { hasText: "(you)" }).count()).toBe(1);

    await second.click("#wave");
    await first.locator("#changes li", { hasText: "waved" }).waitFor();

    await second.close();
    await first.locator("#watching", { hasText: "1" }).waitFor();
  } finally {
    await first.close();
    if (!second.isClosed()) await second.close();
  }
});
