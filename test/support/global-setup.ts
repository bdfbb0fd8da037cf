/** Once per `npm test` (Node project): build the demo bundle and the CLI, start one Postgres for every file. */
import type { TestProject } from "vitest/node";
import { buildCli, buildDemo } from "../../scripts/build.ts";
import { startPostgres } from "../../scripts/postgres.ts";

declare module "vitest" {
  export interface ProvidedContext {
    /** Superuser URL of the test Postgres's maintenance database. */
    postgresUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Nothing may be downloaded at run time: no Request.cf fetch, no telemetry.
  process.env.CLOUDFLARE_CF_FETCH_ENABLED = "false";
  process.env.WRANGLER_SEND_METRICS = "false";
  await Promise.all([buildDemo(), buildCli()]);
  const postgres = await startPostgres();
  project.provide("postgresUrl", postgres.url);
  return () => postgres.stop();
}
