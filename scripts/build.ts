/**
 * Builds what is not TypeScript-at-runtime: the demo page's bundle (demo/public/app.js) and the
 * relay CLI (dist/cli.js, the package's `bin`). Run by `npm install` (prepare), `npm run build`,
 * `npm run dev`, the tests' global setup and `npm run deploy`.
 */
import { build } from "esbuild";
import { fileURLToPath } from "node:url";

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

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await Promise.all([buildDemo(), buildCli()]);
}
