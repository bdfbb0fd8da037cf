/** Installs sql/realtime.sql (idempotent) into a database. */
import { readFileSync } from "node:fs";
import type pg from "pg";

/** The schema's SQL text. Read at call time so a bundled CLI finds it next to the package's sql/. */
export function schemaSql(): string {
  for (const candidate of ["../sql/realtime.sql", "../../sql/realtime.sql"]) {
    try {
      return readFileSync(new URL(candidate, import.meta.url), "utf8");
    } catch {
      // try the next layout (source tree or dist/)
    }
  }
  throw new Error("sql/realtime.sql not found next to the relay");
}

/**
 * Installs or upgrades the `realtime` schema. Serialized by an advisory lock so that two
 * installers (two relays starting together) do not race on `create ... if not exists`.
 */
export async function installSchema(db: pg.ClientBase): Promise<void> {
  await db.query("select pg_advisory_lock(hashtext('pg-edge-realtime'), 0)");
  try {
    await db.query(schemaSql());
  } finally {
    await db.query("select pg_advisory_unlock(hashtext('pg-edge-realtime'), 0)");
  }
}
