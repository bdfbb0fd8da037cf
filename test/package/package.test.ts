/**
 * The package as users get it: `npm pack`, installed into a fresh app with npm, then used the way
 * an app uses it. Plain `node` (the system's, and Node 22) imports `client` and `token` and
 * receives an event from a real stack; `tsc` with the stock config of `tsc --init` (NodeNext) and
 * with Bundler resolution type-checks code using client, client/react, token and worker; a user's
 * Worker that mounts the realtime routes beside its own route (wrangler.toml from `init`) passes
 * `wrangler deploy --dry-run`; the installed `bin` runs `--help`, `install` and `init`.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Relay } from "../../relay/relay.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { caughtUp, relayEvent, startRelay } from "../support/relay.ts";
import { startTestWorker, TEST_JWT_SECRET, type TestWorker } from "../support/worker.ts";

const run = promisify(execFile);
const repo = fileURLToPath(new URL("../..", import.meta.url));
const ours = (name: string) => (JSON.parse(readFileSync(join(repo, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;

/** The first `node` on the PATH outside node_modules: the system's (Node 20 on this project's machines). */
async function systemNode(): Promise<string> {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir.includes("node_modules")) continue;
    const candidate = join(dir, "node");
    try {
      await run(candidate, ["--version"]);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error("no system node on the PATH");
}

let app: string;
let tarball: string;
let db: TestDatabase;
let worker: TestWorker;
let relay: Relay;
let nodes: { label: string; path: string; version: string }[];

beforeAll(async () => {
  const tmp = mkdtempSync(join(tmpdir(), "pg-edge-realtime-pack-"));
  // npm pack runs the package's prepack: the library build (tsc) and the CLI bundle.
  const { stdout } = await run("npm", ["pack", "--json", "--pack-destination", tmp], { cwd: repo, maxBuffer: 64 * 1024 * 1024 });
  tarball = join(tmp, (JSON.parse(stdout) as { filename: string }[])[0]!.filename);
  app = join(tmp, "app");
  mkdirSync(join(app, "src"), { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "user-app", private: true, type: "module" }, null, 2));
  // What a user adds beside the package: ws (Node 20 has no WebSocket), React, Hono for their
  // Worker, and the types their tools need. Versions as this repository uses them.
  await run(
    "npm",
    [
      "install",
      "--prefer-offline",
      "--no-audit",
      "--no-fund",
      tarball,
      `ws@${ours("ws")}`,
      `react@${ours("react")}`,
      `@types/react@${ours("@types/react")}`,
      `hono@${ours("hono")}`,
      `@cloudflare/workers-types@${ours("@cloudflare/workers-types")}`,
      `typescript@${ours("typescript")}`,
    ],
    { cwd: app, maxBuffer: 64 * 1024 * 1024 },
  );
  const system = await systemNode();
  nodes = [
    { label: "system", path: system, version: (await run(system, ["--version"])).stdout.trim() },
    { label: "node@22", path: process.execPath, version: process.version },
  ];
  [db, worker] = await Promise.all([testDatabase("package"), startTestWorker({ PUBLIC_CHANNELS: "" })]);
  relay = startRelay({ databaseUrl: db.url, workerUrl: worker.url });
  await relayEvent(relay, "idle");
}, 300_000);

afterAll(async () => {
  await relay?.stop();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
  if (app) rmSync(join(app, ".."), { recursive: true, force: true });
});

describe("the packed package", () => {
  it("ships dist, sql, deploy, README and LICENSE, no TypeScript sources, and no install scripts", async () => {
    const { stdout } = await run("tar", ["-tzf", tarball]);
    const files = stdout
      .trim()
      .split("\n")
      .map((f) => f.replace(/^package\//, ""));
    expect(files).toEqual(
      expect.arrayContaining([
        "LICENSE",
        "README.md",
        "package.json",
        "sql/realtime.sql",
        "dist/cli.js",
        "dist/client/index.js",
        "dist/client/index.d.ts",
        "dist/worker/entry.js",
        "dist/worker/entry.d.ts",
      ]),
    );
    expect(files.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([]);
    const manifest = JSON.parse(readFileSync(join(app, "node_modules/pg-edge-realtime/package.json"), "utf8")) as { scripts?: Record<string, string> };
    for (const hook of ["prepare", "preinstall", "install", "postinstall"]) expect(manifest.scripts?.[hook]).toBeUndefined();
    expect(readdirSync(join(app, "node_modules/pg-edge-realtime"))).not.toContain("client");
  });

  it("runs on plain node: imports client and token, mints a token, and receives an event from the stack (system node and Node 22)", async () => {
    expect(Number(/^v(\d+)/.exec(nodes[0]!.version)![1])).toBeGreaterThanOrEqual(20);
    writeFileSync(
      join(app, "subscribe.mjs"),
      `import WebSocket from "ws";
import { subscribe, isMarker } from "pg-edge-realtime/client";
import { mintToken } from "pg-edge-realtime/token";
const [host, channel] = process.argv.slice(2);
const token = await mintToken({ secret: process.env.JWT_SECRET, sub: "node-app", channels: [channel] });
const sub = subscribe({
  host, channel, token, WebSocket,
  onStatus: (s) => s === "open" && console.log("open"),
  onEvents: (events) => {
    for (const e of events) console.log(JSON.stringify({ event: e.event, data: e.data, marker: isMarker(e.data) }));
    sub.close();
  },
});
`,
    );
    for (const node of nodes) {
      const channel = `pkg-${node.label.replace(/\W/g, "")}`;
      const child = execFile(node.path, ["subscribe.mjs", new URL(worker.url).host, channel], {
        cwd: app,
        env: { ...process.env, JWT_SECRET: TEST_JWT_SECRET },
      });
      let out = "";
      child.stdout!.on("data", (d: Buffer) => (out += d));
      child.stderr!.on("data", (d: Buffer) => (out += d));
      const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on("data", () => out.includes("open") && resolve());
        void exited.then(() => reject(new Error(`${node.label} (${node.version}) exited before opening: ${out}`)));
      });
      // An id past 2^53: the client's default (numbers: "exact") hands it over as its digits.
      await db.sql(`select realtime.publish($1, 'hello', ('{"id": 9007199254740993, "from": ' || to_json($2::text) || '}')::jsonb)`, [channel, node.label]);
      expect(await exited, out).toBe(0);
      const lines = out
        .trim()
        .split("\n")
        .slice(1)
        .map((l) => JSON.parse(l) as { event: string; data: { id: unknown; from?: string } });
      expect(lines[0], `${node.label} ${node.version}`).toEqual({ event: "hello", data: { id: "9007199254740993", from: node.label }, marker: false });
    }
    await caughtUp(relay);
  });

  it("type-checks code using client, client/react, token and worker with tsc's stock config (NodeNext) and with Bundler resolution", async () => {
    const tsc = join(app, "node_modules/typescript/bin/tsc");
    await run(process.execPath, [tsc, "--init"], { cwd: app });
    writeFileSync(
      join(app, "src/app.ts"),
      `import { subscribe, isMarker, type ChangeEvent, type ChannelEvent } from "pg-edge-realtime/client";
import { mintToken } from "pg-edge-realtime/token";
import { parseJson, type ServerFrame } from "pg-edge-realtime/protocol";

interface Todo { id: number | string; title: string }
const token: string = await mintToken({ secret: "x".repeat(32), sub: "u", channels: ["todos"], ttlSeconds: 60 });
const sub = subscribe<{ insert: ChangeEvent<Todo> }>({
  host: "example.com",
  channel: "todos",
  token,
  numbers: "bigint",
  on: { insert: (data) => console.log(data.new?.title) },
  onEvents: (events: ChannelEvent[]) => events.forEach((e) => isMarker(e.data) && console.log(e.data.reason)),
});
const frame = parseJson('{"type":"welcome","channel":"c","epoch":"e","seq":1}') as ServerFrame;
console.log(frame.type, sub.seq);
`,
    );
    writeFileSync(
      join(app, "src/view.tsx"),
      `import { useChannel } from "pg-edge-realtime/client/react";

interface Todo { id: number; title: string }
export function Todos({ token }: { token: string }) {
  const { status, state, oversized } = useChannel<Todo>("todos", { host: "example.com", token });
  if (state === null) return <p>{status}</p>;
  return <ul>{state.map((t) => <li key={t.id}>{t.title}</li>)}{oversized.map((r) => <li key={String(r.key.id)}>too large</li>)}</ul>;
}
`,
    );
    writeFileSync(join(app, "src/worker.ts"), readFileSync(join(repo, "test/package/fixtures/worker.ts"), "utf8"));
    // The stock config, untouched, for the Node code; and the Worker with workerd's types.
    const stock = readFileSync(join(app, "tsconfig.json"), "utf8");
    expect(stock).toMatch(/"module":\s*"nodenext"/);
    writeFileSync(
      join(app, "tsconfig.node.json"),
      JSON.stringify({
        extends: "./tsconfig.json",
        compilerOptions: { lib: ["esnext", "dom"], types: [], noEmit: true },
        files: ["src/app.ts", "src/view.tsx"],
      }),
    );
    writeFileSync(
      join(app, "tsconfig.bundler.json"),
      JSON.stringify({
        extends: "./tsconfig.json",
        compilerOptions: { module: "preserve", moduleResolution: "bundler", lib: ["esnext", "dom"], types: [], noEmit: true },
        files: ["src/app.ts", "src/view.tsx"],
      }),
    );
    writeFileSync(
      join(app, "tsconfig.worker.json"),
      JSON.stringify({
        extends: "./tsconfig.json",
        compilerOptions: { lib: ["esnext"], types: ["@cloudflare/workers-types"], noEmit: true },
        files: ["src/worker.ts"],
      }),
    );
    writeFileSync(
      join(app, "tsconfig.worker-bundler.json"),
      JSON.stringify({ extends: "./tsconfig.worker.json", compilerOptions: { module: "preserve", moduleResolution: "bundler" } }),
    );
    for (const project of ["tsconfig.node.json", "tsconfig.bundler.json", "tsconfig.worker.json", "tsconfig.worker-bundler.json"]) {
      const result = await run(process.execPath, [tsc, "-p", project], { cwd: app }).catch((err: { stdout: string }) => ({ stdout: err.stdout, failed: true }));
      expect(result, `${project}: ${result.stdout}`).not.toHaveProperty("failed");
    }
  });

  it("runs its bin on plain node: --help, install into a database, and init, which writes a Worker project that passes wrangler deploy --dry-run", async () => {
    const bin = join(app, "node_modules/.bin/pg-edge-realtime");
    const system = nodes[0]!.path;
    const help = await run(system, [bin, "--help"]);
    expect(help.stdout).toMatch(/Usage: pg-edge-realtime <command>/);
    expect(help.stdout).toMatch(/\binit\b/);
    const fresh = await testDatabase("package_install");
    try {
      await fresh.sql("drop schema realtime cascade");
      const installed = await run(system, [bin, "install", "--database-url", fresh.url]);
      expect(installed.stderr).toMatch(/realtime schema installed/);
      // The test Postgres runs with wal_level = logical: install recommends capture without triggers.
      expect(installed.stderr).toMatch(/wal_level = logical, so run the relay with --source publication/);
      expect(await fresh.sql("select count(*)::int as n from realtime.installation")).toEqual([{ n: 1 }]);
    } finally {
      await fresh.drop();
    }

    // A user's Worker project with its own route and config: init adds the bindings, never overwrites.
    const project = join(app, "worker-project");
    mkdirSync(join(project, "src"), { recursive: true });
    const userToml = `name = "user-worker"\nmain = "src/worker.ts"\ncompatibility_date = "2026-10-01"\n\n[vars]\nGREETING = "hi"\n`;
    writeFileSync(join(project, "wrangler.toml"), userToml);
    writeFileSync(join(project, "src/worker.ts"), readFileSync(join(repo, "test/package/fixtures/worker.ts"), "utf8"));
    const first = await run(system, [bin, "init", project]);
    expect(first.stdout).toMatch(/appended\s+wrangler\.toml/);
    expect(first.stdout).toMatch(/created\s+\.dev\.vars\.example/);
    const toml = readFileSync(join(project, "wrangler.toml"), "utf8");
    expect(toml.startsWith(userToml)).toBe(true);
    expect(toml).toMatch(/class_name = "ChannelShard"/);
    const second = await run(system, [bin, "init", project]);
    expect(second.stdout).toMatch(/unchanged wrangler\.toml/);
    expect(readFileSync(join(project, "wrangler.toml"), "utf8")).toBe(toml);

    // The user's Worker bundles for deploy (its imports resolved from the app's node_modules).
    const wrangler = join(repo, "node_modules/wrangler/bin/wrangler.js");
    const dry = await run(process.execPath, [wrangler, "deploy", "--dry-run", "--outdir", join(project, "out"), "--config", join(project, "wrangler.toml")], {
      cwd: project,
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
      maxBuffer: 64 * 1024 * 1024,
    });
    expect(dry.stdout + dry.stderr).toMatch(/--dry-run: exiting now/);
    const bundle = readFileSync(join(project, "out", readdirSync(join(project, "out")).find((f) => f.endsWith(".js"))!), "utf8");
    expect(bundle).toContain("/api/hello");
    // The Durable Object classes are exported by the user's main module, as wrangler requires.
    expect(bundle).toMatch(/export\s*\{[^}]*\bChannel\b[^}]*\}/);
    expect(bundle).toMatch(/export\s*\{[^}]*\bChannelShard\b[^}]*\}/);

    // A new project: init writes a whole one, which bundles too.
    const empty = join(app, "new-project");
    mkdirSync(empty);
    const created = await run(system, [bin, "init", empty]);
    expect(created.stdout).toMatch(/created\s+wrangler\.toml/);
    expect(created.stdout).toMatch(/created\s+src\/index\.ts/);
    // It sits inside the app, so its imports resolve from the app's node_modules (Node walks up).
    await run(process.execPath, [wrangler, "deploy", "--dry-run", "--outdir", join(empty, "out"), "--config", join(empty, "wrangler.toml")], {
      cwd: empty,
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" },
      maxBuffer: 64 * 1024 * 1024,
    });
  });
});
