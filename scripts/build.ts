/**
 * Builds what is not TypeScript-at-runtime: the package (dist/: JavaScript, types and source maps
 * of client, client/react, token, protocol and worker, and the relay CLI dist/cli.js, the `bin`)
 * and the demo page's bundle (demo/public/app.js). `npm run build` builds everything (and `npm
 * pack` runs it); `npm run dev`, the tests' global setup and `npm run deploy` build what they use.
 */

import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = (p: string) => fileURLToPath(new URL(`../${p}`, import.meta.url));

/** Bundles demo/app.ts (with partysocket) for browsers. */
export async function buildDemo(): Promise<void> {
  await build({
    entryPoints: [root("demo/app.ts")],
    outfile: root("demo/public/app.js"),
    bundle: true,
    format: "esm",
    target: "es2022",
    sourcemap: true,
    logLevel: "warning",
  });
}

/** Bundles the relay CLI for Node 20+, with `pg` left as a dependency. */
export async function buildCli(): Promise<void> {
  await build({
    entryPoints: [root("relay/cli.ts")],
    outfile: root("dist/cli.js"),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    logLevel: "warning",
  });
}

/**
 * The library entries with tsc: ESM JavaScript, .d.ts and source maps (sources inlined) in dist/,
 * the module layout kept. The sources import each other as `./x.ts`: tsc rewrites those to `.js`
 * in the JavaScript, and this rewrites them in the declarations, which tsc leaves as written.
 */
export async function buildLibrary(): Promise<void> {
  for (const dir of ["client", "protocol", "token", "worker"]) rmSync(root(`dist/${dir}`), { recursive: true, force: true });
  const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));
  for (const project of ["tsconfig.build.json", "worker/tsconfig.build.json"]) execFileSync(process.execPath, [tsc, "-p", root(project)], { stdio: "inherit" });
  for (const file of walk(root("dist"))) {
    if (!file.endsWith(".d.ts")) continue;
    const text = readFileSync(file, "utf8");
    const fixed = text.replace(/((?:from|import)\s*\(?\s*)(["'])(\.{1,2}\/[^"']+)\.ts\2/g, "$1$2$3.js$2");
    if (fixed !== text) writeFileSync(file, fixed);
  }
}

function* walk(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else yield path;
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await Promise.all([buildDemo(), buildCli(), buildLibrary()]);
}
