/** A fresh database per test file, with the realtime schema installed. */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { inject } from "vitest";
import { installSchema } from "../../relay/install.ts";
import { createDatabase } from "../../scripts/postgres.ts";

/** A database of the test's own, its URL, and helpers bound to it. */
export interface TestDatabase {
  url: string;
  /** Runs one statement on a short-lived connection. */
  sql<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]>;
  /** A connected client; ended by `drop()`. */
  client(): Promise<pg.Client>;
  drop(): Promise<void>;
}

/** Creates `t_<label>_<random>` on the test Postgres and installs sql/realtime.sql into it. */
export async function testDatabase(label: string, adminUrl: string = inject("postgresUrl")): Promise<TestDatabase> {
  const name = `t_${label.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const db = await createDatabase(adminUrl, name);
  const clients: pg.Client[] = [];
  const client = async () => {
    const c = new pg.Client({ connectionString: db.url });
    c.on("error", () => {}); // fault tests terminate backends on purpose
    await c.connect();
    clients.push(c);
    return c;
  };
  const setup = await client();
  await installSchema(setup);
  return {
    url: db.url,
    client,
    async sql(text, values) {
      const c = new pg.Client({ connectionString: db.url });
      await c.connect();
      try {
        return (await c.query(text, values)).rows;
      } finally {
        await c.end();
      }
    },
    async drop() {
      await Promise.allSettled(clients.map((c) => c.end()));
      await db.drop();
    },
  };
}
