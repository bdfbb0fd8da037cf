/**
 * `pg-edge-realtime init`: adds realtime to the Worker project in a directory. It writes the
 * Durable Object bindings and their migration into wrangler.toml (appended; an existing file is
 * never rewritten), creates what is missing for a new project (wrangler.toml, src/index.ts,
 * .dev.vars.example), and says what is left to do. Run again, it changes nothing.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";

/** The wrangler.toml lines realtime needs, as init appends them. */
export const WRANGLER_TOML_BLOCK = `
# pg-edge-realtime: one Durable Object per channel (CHANNEL), and the shards of busy channels
# (SHARD). Your main module exports both classes:
#   export { Channel, ChannelShard } from "pg-edge-realtime/worker";
# Secrets: wrangler secret put INGEST_SECRET (shared with the relay), JWT_SECRET (your tokens).
[[durable_objects.bindings]]
name = "CHANNEL"
class_name = "Channel"

[[durable_objects.bindings]]
name = "SHARD"
class_name = "ChannelShard"

# A migration tag of its own, so it never collides with yours. Never edit an applied migration.
[[migrations]]
tag = "pg-edge-realtime-v1"
new_sqlite_classes = ["Channel", "ChannelShard"]
`;

/** The same, for a wrangler.json(c) (printed: init does not rewrite JSON). */
export const WRANGLER_JSON_BLOCK = `  "durable_objects": {
    "bindings": [
      { "name": "CHANNEL", "class_name": "Channel" },
      { "name": "SHARD", "class_name": "ChannelShard" }
    ]
  },
  "migrations": [{ "tag": "pg-edge-realtime-v1", "new_sqlite_classes": ["Channel", "ChannelShard"] }]`;

const INDEX_TS = `import { Hono } from "hono";
import { realtimeRoutes, type RealtimeEnv } from "pg-edge-realtime/worker";

// The Durable Object classes must be exported by the Worker's main module.
export { Channel, ChannelShard } from "pg-edge-realtime/worker";

const app = new Hono<{ Bindings: RealtimeEnv }>();

// Your own routes, beside the realtime ones.
app.get("/", (c) => c.text("ok"));

// POST /ingest (the relay), GET /parties/main/<channel> (browsers), GET /channels/<channel>/stats.
app.route("/", realtimeRoutes());

export default app;
`;

const DEV_VARS = `# Copy to .dev.vars for wrangler dev (never commit .dev.vars). In production: wrangler secret put <NAME>.
INGEST_SECRET=change-me-to-a-long-random-string
JWT_SECRET=change-me-to-at-least-32-random-characters
`;

/** What init did, file by file, and what is left to the user. */
export interface InitReport {
  created: string[];
  appended: string[];
  unchanged: string[];
  /** Things to do by hand (a JSON config to edit, secrets to set). */
  todo: string[];
}

/** Adds realtime to the Worker project in `dir`; never overwrites a file. */
export function initProject(dir: string, today = new Date()): InitReport {
  const root = resolve(dir);
  const report: InitReport = { created: [], appended: [], unchanged: [], todo: [] };
  const create = (path: string, text: string) => {
    const full = join(root, path);
    if (existsSync(full)) return void report.unchanged.push(path);
    mkdirSync(join(full, ".."), { recursive: true });
    writeFileSync(full, text, { flag: "wx" });
    report.created.push(path);
  };
  const json = ["wrangler.jsonc", "wrangler.json"].find((f) => existsSync(join(root, f)));
  const toml = join(root, "wrangler.toml");
  if (existsSync(toml)) {
    const text = readFileSync(toml, "utf8");
    if (/class_name\s*=\s*"Channel"/.test(text)) {
      report.unchanged.push("wrangler.toml");
    } else if (/^\s*\[durable_objects\]|^\s*durable_objects\s*=|^\s*migrations\s*=/m.test(text)) {
      // Bindings written as an inline table or array: appending array tables would not parse.
      report.unchanged.push("wrangler.toml");
      report.todo.push(
        `wrangler.toml declares its Durable Objects inline: add the CHANNEL and SHARD bindings and the migration by hand:\n${WRANGLER_TOML_BLOCK}`,
      );
    } else {
      writeFileSync(toml, `${text.replace(/\s*$/, "\n")}${WRANGLER_TOML_BLOCK}`);
      report.appended.push("wrangler.toml");
    }
  } else if (json) {
    report.unchanged.push(json);
    if (!/"Channel"/.test(readFileSync(join(root, json), "utf8"))) report.todo.push(`add to ${json}:\n${WRANGLER_JSON_BLOCK}`);
  } else {
    const name =
      (packageName(root) ?? basename(root))
        .replace(/^@[^/]+\//, "")
        .replace(/[^a-z0-9-]/gi, "-")
        .toLowerCase() || "realtime";
    create("wrangler.toml", `name = "${name}"\nmain = "src/index.ts"\ncompatibility_date = "${today.toISOString().slice(0, 10)}"\n${WRANGLER_TOML_BLOCK}`);
    create("src/index.ts", INDEX_TS);
  }
  create(".dev.vars.example", DEV_VARS);
  report.todo.push(
    'export { Channel, ChannelShard } from "pg-edge-realtime/worker" in your main module, and mount realtimeRoutes() (or call handleRealtime) beside your routes',
    "wrangler secret put INGEST_SECRET, and wrangler secret put JWT_SECRET (at least 32 characters)",
    "install the schema (npx pg-edge-realtime install --database-url ...) and run the relay beside your database with WORKER_URL set to this Worker",
  );
  return report;
}

function packageName(root: string): string | null {
  try {
    return (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { name?: string }).name ?? null;
  } catch {
    return null;
  }
}
