/**
 * The README's first command: `npm run dev` starts the whole stack, prints where it is, delivers
 * a row typed into Postgres to a WebSocket on the demo channel, serves the demo page, and stops
 * everything on SIGTERM.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { expect, it } from "vitest";
import { freePort, unreachableByOthers } from "../../scripts/postgres.ts";
import { startDevStack } from "../support/dev.ts";
import { TestSubscriber, upgradeStatus } from "../support/subscriber.ts";

it.each([
  ["outbox", "(the default)"],
  ["publication", "(RELAY_SOURCE=publication: no trigger)"],
])(
  "npm run dev prints worker/database/demo/token/relay, relays a psql insert to the todos channel, and stops cleanly on SIGTERM: capture %s %s",
  async (source) => {
    const port = await freePort();
    const dev = startDevStack({ PORT: String(port), RELAY_SOURCE: source });
    try {
      const lines = await dev.until(
        (out) => {
          const m = /worker: (\S+)\ndatabase: (\S+)\ndemo: (\S+)\ntoken: (\S+)\nrelay: (\S+) \(capture: (\w+)\)\n/.exec(out);
          return m ? { worker: m[1]!, database: m[2]!, demo: m[3]!, token: m[4]!, relay: m[5]!, capture: m[6]! } : undefined;
        },
        "the stack's lines",
        90_000,
      );
      expect(lines.worker).toBe(`http://127.0.0.1:${port}`);
      expect(lines.capture).toBe(source);
      expect(lines.demo.startsWith(`${lines.worker}/?api=`)).toBe(true);

      expect(await (await fetch(`${lines.relay}/readyz`)).json()).toEqual({ ready: true, role: "leader" });
      const page = await fetch(lines.demo);
      expect(page.status).toBe(200);
      expect(await page.text()).toContain("Live todos");
      expect((await fetch(`${lines.worker}/app.js`)).status).toBe(200);

      // todos is private: without the printed token the upgrade is refused.
      const refused = await upgradeStatus(`${lines.worker}/parties/main/todos`);
      expect(refused).toMatchObject({ status: 401, body: { error: { code: "token_required" } } });
      expect(lines.demo).toContain(`token=${lines.token}`);
      const sub = await TestSubscriber.connect(lines.worker, "todos", { token: lines.token });
      const db = new pg.Client({ connectionString: lines.database });
      await db.connect();
      try {
        await db.query("insert into todos (title) values ('hello from psql')");
        const [e] = await sub.until(() => sub.events.length > 0 && sub.events, "the insert");
        expect(e).toMatchObject({ event: "insert", data: { table: "todos", new: { title: "hello from psql" } } });
      } finally {
        sub.close();
        await db.end();
      }

      dev.child.kill("SIGTERM");
      expect(await dev.exited).toBe(0);
      // Everything it started is gone: the Worker's port and the database refuse connections.
      await expect(fetch(`${lines.worker}/health`)).rejects.toThrow();
      const after = new pg.Client({ connectionString: lines.database });
      await expect(after.connect()).rejects.toThrow();
    } finally {
      dev.cleanup();
    }
  },
  180_000,
);

it("names the directory that keeps the postgres user (Postgres as root) from its data or binaries, before initdb fails on it", () => {
  const outer = mkdtempSync(join(tmpdir(), "reach-")); // 0700, as mktemp makes it
  try {
    const inner = join(outer, "node_modules");
    mkdirSync(inner, { mode: 0o755 });
    expect(unreachableByOthers(inner, "its binaries")).toBe(`Postgres runs as the postgres user and cannot enter ${outer}, above its binaries`);
    chmodSync(outer, 0o755);
    expect(unreachableByOthers(inner, "its binaries")).toBeNull();
  } finally {
    rmSync(outer, { recursive: true, force: true });
  }
});
