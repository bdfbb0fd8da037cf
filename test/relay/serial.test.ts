/**
 * relay/serial.ts: the relay's loops share each session connection through a SerialClient, which
 * runs their queries one after another in the order asked, so node-postgres never has to queue
 * them (deprecated in pg 8, removed in pg 9).
 */

import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SerialClient } from "../../relay/serial.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";

let db: TestDatabase;
let client: pg.Client;

beforeAll(async () => {
  db = await testDatabase("serial");
  client = await db.client();
});

afterAll(async () => {
  await client?.end();
  await db?.drop();
});

/** The warnings node-postgres emits while `fn` runs (it emits each kind once per process). */
async function pgWarnings(fn: () => Promise<unknown>): Promise<string[]> {
  const seen: string[] = [];
  const listener = (w: Error) => void (/client\.query\(\)/.test(w.message) && seen.push(w.message));
  process.on("warning", listener);
  try {
    await fn();
    await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
  } finally {
    process.off("warning", listener);
  }
  return seen;
}

describe("SerialClient", () => {
  it("runs overlapping queries in the order asked, one at a time, past a failed one, without pg's queue", async () => {
    const serial = new SerialClient(client);
    const results: unknown[] = [];
    const warnings = await pgWarnings(() =>
      Promise.allSettled([
        // The first holds the connection for 50 ms: had the others been sent at once, pg would
        // have queued them behind it.
        serial.query<{ n: number }>("select 1 as n from pg_sleep(0.05)").then((r) => results.push(r.rows[0]!.n)),
        serial.query("select 1/0").catch((err: Error) => results.push(err.message)),
        serial.query<{ n: number }>("select $1::int as n", [3]).then((r) => results.push(r.rows[0]!.n)),
      ]),
    );
    expect(results).toEqual([1, "division by zero", 3]);
    expect(warnings).toEqual([]);
    // The same three on the bare client: pg warns, so the check above can see a warning.
    const bare = await pgWarnings(() => Promise.allSettled([client.query("select pg_sleep(0.05)"), client.query("select 2"), client.query("select 3")]));
    expect(bare).toEqual([expect.stringMatching(/already executing a query/)]);
  });
});
