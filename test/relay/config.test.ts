/**
 * The relay's configuration, without a process: every bad setting is refused by the resolver or
 * the command line's parser with one line saying what to fix (relay.test.ts keeps one spawned CLI
 * to prove that line exits 2), and the options table agrees with --help and the README.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { optionsFromArgs, USAGE } from "../../relay/args.ts";
import { RelayConfigError, type RelayOptions } from "../../relay/config.ts";
import { OPTIONS, type OptionSpec, optionKeys, RELAY_OPTIONS, requireOption, resolveRelayOptions, type Settings } from "../../relay/options.ts";

const SECRET = "test-secret-0123456789abcdef";
const GOOD = { databaseUrl: "postgres://relay:pw@127.0.0.1:5432/app", workerUrl: "https://w.example.workers.dev", ingestSecret: SECRET };
const ENV = { DATABASE_URL: GOOD.databaseUrl, WORKER_URL: GOOD.workerUrl, INGEST_SECRET: SECRET };

/** The message `fn` throws, checked to be a RelayConfigError on one line. */
function refusal(fn: () => unknown): string {
  let error: unknown;
  try {
    fn();
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(RelayConfigError);
  const message = (error as RelayConfigError).message;
  expect(message).not.toContain("\n");
  expect(message).not.toContain(SECRET);
  return message;
}

/** Resolves `options` as a JavaScript caller may pass them: anything, in any field. */
function resolveLoose(options: Record<string, unknown>) {
  return resolveRelayOptions(options as Partial<RelayOptions>);
}

/** What the CLI does with argv and the environment before it connects: parse, then resolve. */
function configure(argv: string[], env: Record<string, string>) {
  const args = optionsFromArgs(argv, { ...ENV, ...env });
  return { ...args, resolved: resolveRelayOptions(args.options) };
}

describe("resolveRelayOptions", () => {
  it("fills every default", () => {
    const resolved = resolveRelayOptions(GOOD);
    expect(resolved).toEqual({
      ...GOOD,
      source: "outbox",
      name: "default",
      batchSize: 1000,
      batchBytes: 1048576,
      maxEventBytes: 4194304,
      pollIntervalMs: 1000,
      notify: [],
      notifyQueueMax: 10000,
      requestTimeoutMs: 30000,
      retryBaseMs: 250,
      retryMaxMs: 30000,
      standbyPollMs: 1000,
      retentionSeconds: 3600,
      pruneIntervalMs: 10000,
      pruneBatch: 10000,
      partition: null,
      heartbeatMs: 10000,
      logLevel: "info",
    });
    // An option passed as undefined takes its default too.
    expect(resolveRelayOptions({ ...GOOD, batchSize: undefined }).batchSize).toBe(1000);
  });

  it("accepts every bound of every range", () => {
    const edges: Partial<RelayOptions>[] = [
      { batchSize: 1 },
      { batchSize: 1000 },
      { batchBytes: 1024 },
      { maxEventBytes: 16 * 1024 * 1024 },
      { pollIntervalMs: 10 },
      { notifyQueueMax: 1_000_000 },
      { requestTimeoutMs: 100 },
      { retryBaseMs: 1, retryMaxMs: 1 },
      { standbyPollMs: 600_000 },
      { retentionSeconds: 0 },
      { pruneIntervalMs: 86_400_000 },
      { pruneBatch: 1 },
      { heartbeatMs: 0 },
      { heartbeatMs: 100 },
      { partition: { index: 255, count: 256 } },
      { source: "publication" },
      { logLevel: "silent" },
      { name: "a".repeat(64) },
      { workerUrl: "http://127.0.0.1:8787/realtime" },
      { databaseUrl: "postgresql://x" },
      { notify: [{ pgChannel: "data_changes", channel: "items:live" }] },
    ];
    for (const edge of edges) expect(() => resolveRelayOptions({ ...GOOD, ...edge })).not.toThrow();
  });

  it.each<[Record<string, unknown>, string]>([
    [{ databaseUrl: "" }, "DATABASE_URL is not set: pass --database-url postgres://user:password@host:5432/db or set DATABASE_URL"],
    [{ databaseUrl: "mysql://x" }, "DATABASE_URL must start with postgres:// or postgresql:// (for example postgres://user:password@host:5432/db)"],
    [{ workerUrl: "" }, "WORKER_URL is not set: pass --worker-url https://<your worker>.workers.dev or set WORKER_URL"],
    [{ workerUrl: "not a url" }, `WORKER_URL "not a url" is not a URL: use the Worker's base URL, for example https://pg-edge-realtime.example.workers.dev`],
    [{ workerUrl: "ftp://x" }, "WORKER_URL must be http:// or https://, got ftp:"],
    [{ ingestSecret: "" }, "INGEST_SECRET is not set: set it to the same value as the Worker's secret (wrangler secret put INGEST_SECRET)"],
    [{ ingestSecret: "fifteen-chars-x" }, "INGEST_SECRET must be at least 16 characters (try: openssl rand -hex 32)"],
    [{ source: "logs" }, `--source must be outbox, wal or publication, got "logs"`],
    [{ name: "a b" }, `--name must be 1-64 of A-Z a-z 0-9 _ . -, got "a b"`],
    [{ name: "a".repeat(65) }, `--name must be 1-64 of A-Z a-z 0-9 _ . -, got "${"a".repeat(65)}"`],
    [{ batchSize: 0 }, "--batch-size must be an integer from 1 to 1000, got 0"],
    [{ batchSize: 5000 }, "--batch-size must be an integer from 1 to 1000, got 5000"],
    [{ batchSize: 1.5 }, "--batch-size must be an integer from 1 to 1000, got 1.5"],
    [{ batchBytes: 1023 }, "--batch-bytes must be an integer from 1024 to 16777216, got 1023"],
    [{ maxEventBytes: 16 * 1024 * 1024 + 1 }, "--max-event-bytes must be an integer from 1024 to 16777216, got 16777217"],
    [{ pollIntervalMs: 9 }, "--poll-interval must be an integer from 10 to 3600000, got 9"],
    [{ notifyQueueMax: 0 }, "--notify-queue-max must be an integer from 1 to 1000000, got 0"],
    [{ requestTimeoutMs: 99 }, "--request-timeout must be an integer from 100 to 600000, got 99"],
    [{ retryBaseMs: 0 }, "--retry-base must be an integer from 1 to 600000, got 0"],
    [{ retryBaseMs: 500, retryMaxMs: 499 }, "--retry-max must be an integer from 500 to 3600000, got 499"],
    [{ standbyPollMs: 9 }, "--standby-poll must be an integer from 10 to 600000, got 9"],
    [{ retentionSeconds: -1 }, "--retention must be an integer from 0 to 315360000, got -1"],
    [{ pruneIntervalMs: 9 }, "--prune-interval must be an integer from 10 to 86400000, got 9"],
    [{ pruneBatch: 0 }, "--prune-batch must be an integer from 1 to 1000000, got 0"],
    [{ heartbeatMs: 99 }, "--heartbeat must be an integer from 100 to 3600000, got 99"],
    [
      { partition: { index: 0, count: 2 }, source: "wal" },
      "--partition works with --source outbox only: a wal relay reads every channel from its replication slot (run one, or partition with the outbox source)",
    ],
    [{ partition: { index: 0, count: 0 } }, "--partition count must be an integer from 1 to 256, got 0"],
    [{ partition: { index: 0, count: 257 } }, "--partition count must be an integer from 1 to 256, got 257"],
    [{ partition: { index: 2, count: 2 } }, "--partition index must be an integer from 0 to 1, got 2"],
    [{ logLevel: "loud" }, `--log-level must be one of debug, info, warn, error, silent, got "loud"`],
    [{ notify: [{ pgChannel: "bad-name", channel: "ok" }] }, `--notify: "bad-name" is not a plain Postgres channel name (letters, digits, _; at most 63)`],
    [{ notify: [{ pgChannel: "ok", channel: "bad channel" }] }, `--notify: "bad channel" is not a valid realtime channel (1-128 of A-Z a-z 0-9 _ . : @ -)`],
    [{ notify: [{ pgChannel: "realtime_doorbell", channel: "x" }] }, "--notify: realtime_doorbell is the relay's own doorbell and cannot be forwarded"],
  ])("refuses %o with one line saying what to fix", (over, message) => {
    expect(refusal(() => resolveLoose({ ...GOOD, ...over }))).toBe(message);
  });
});

describe("the command line", () => {
  // Each as the CLI sees it: the variables (or flags) parsed, then resolved.
  it.each<[Record<string, string>, RegExp]>([
    [{ DATABASE_URL: "" }, /^DATABASE_URL is not set: pass --database-url/],
    [{ DATABASE_URL: "mysql://x" }, /^DATABASE_URL must start with postgres:\/\//],
    [{ WORKER_URL: "" }, /^WORKER_URL is not set/],
    [{ WORKER_URL: "not a url" }, /is not a URL/],
    [{ INGEST_SECRET: "" }, /^INGEST_SECRET is not set/],
    [{ INGEST_SECRET: "short" }, /at least 16 characters/],
    [{ RELAY_BATCH_SIZE: "lots" }, /^--batch-size \(RELAY_BATCH_SIZE\) must be a whole number, got "lots"$/],
    [{ RELAY_BATCH_SIZE: "5000" }, /^--batch-size must be an integer from 1 to 1000, got 5000$/],
    [{ RELAY_NOTIFY: "bad-name" }, /is not a plain Postgres channel name/],
    [{ RELAY_SOURCE: "logs" }, /^--source must be outbox, wal or publication, got "logs"$/],
    [{ RELAY_HEARTBEAT_MS: "5" }, /^--heartbeat must be an integer from 100 to 3600000, got 5$/],
    [{ RELAY_SOURCE: "wal", RELAY_PARTITION: "0/2" }, /^--partition works with --source outbox only/],
    [{ RELAY_PARTITION: "x" }, /^--partition \(RELAY_PARTITION\) must be <index>\/<count>, e.g. 0\/4, got "x"$/],
    [{ RELAY_PARTITION: "2/2" }, /^--partition index must be an integer from 0 to 1, got 2$/],
    [{ RELAY_HTTP: "nonsense" }, /^--http \(RELAY_HTTP\) must be host:port or off, got "nonsense"$/],
    [{ RELAY_HTTP: "127.0.0.1:70000" }, /^--http \(RELAY_HTTP\) must be host:port or off, got "127.0.0.1:70000"$/],
    // An empty --http is refused, not taken as the default (every other empty value is unset).
    [{ RELAY_HTTP: "" }, /^--http \(RELAY_HTTP\) must be host:port or off, got ""$/],
    [{ LOG_LEVEL: "loud" }, /^--log-level must be one of debug, info, warn, error, silent, got "loud"$/],
  ])("refuses %o with one line saying what to fix", (env, message) => {
    expect(refusal(() => configure(["relay"], env))).toMatch(message);
  });

  it("refuses every whole-number option's text when it is not a whole number", () => {
    for (const key of optionKeys(RELAY_OPTIONS)) {
      const spec = specOf(key);
      if (typeof spec.default !== "number") continue;
      for (const text of ["lots", "-1", "1.5", "1e3"]) {
        expect(refusal(() => configure(["relay"], { [spec.env]: text }))).toBe(
          `--${spec.flag} (${spec.env}) must be a whole number, got ${JSON.stringify(text)}`,
        );
        expect(refusal(() => configure(["relay", `--${spec.flag}=${text}`], {}))).toBe(
          `--${spec.flag} (${spec.env}) must be a whole number, got ${JSON.stringify(text)}`,
        );
      }
    }
  });

  it("refuses an unknown flag, a switch given a value, and an unknown command, pointing to --help", () => {
    expect(refusal(() => optionsFromArgs(["relay", "--bogus"], ENV))).toMatch(/^Unknown option '--bogus'.* \(see --help\)$/);
    expect(refusal(() => optionsFromArgs(["relay", "--install=yes"], ENV))).toMatch(/'--install' does not take an argument.* \(see --help\)$/);
    expect(refusal(() => optionsFromArgs(["relay", "--batch-size"], ENV))).toMatch(/^Option '--batch-size <value>' argument missing \(see --help\)$/);
    expect(refusal(() => optionsFromArgs(["relax"], ENV))).toBe(`unknown command "relax": use relay, install, backfill, init or token (see --help)`);
    expect(refusal(() => optionsFromArgs(["relay", "extra"], ENV))).toBe(
      `unknown command "relay extra": use relay, install, backfill, init or token (see --help)`,
    );
  });

  it("takes the flag over the variable, and an empty variable as unset", () => {
    expect(configure(["relay", "--batch-size", "5"], { RELAY_BATCH_SIZE: "7" }).resolved.batchSize).toBe(5);
    expect(configure(["relay"], { RELAY_BATCH_SIZE: "7" }).resolved.batchSize).toBe(7);
    expect(configure(["relay"], { RELAY_BATCH_SIZE: "" }).resolved.batchSize).toBe(1000);
    // An empty flag is unset too, and does not fall back to the variable.
    expect(configure(["relay", "--batch-size", ""], { RELAY_BATCH_SIZE: "7" }).resolved.batchSize).toBe(1000);
    expect(configure(["relay", "--database-url", "postgres://flag/db"], {}).resolved.databaseUrl).toBe("postgres://flag/db");
  });

  it("reads each kind of value", () => {
    const { resolved } = configure(["relay"], {
      RELAY_NOTIFY: "data_changes, items=items-live,",
      RELAY_PARTITION: "1/4",
      RELAY_SOURCE: "outbox",
      LOG_LEVEL: "warn",
      RELAY_RETENTION_SECONDS: " 60 ",
    });
    expect(resolved.notify).toEqual([
      { pgChannel: "data_changes", channel: "data_changes" },
      { pgChannel: "items", channel: "items-live" },
    ]);
    expect(resolved.partition).toEqual({ index: 1, count: 4 });
    expect(resolved.logLevel).toBe("warn");
    expect(resolved.retentionSeconds).toBe(60);
    // The command line's own options stay out of the relay's.
    expect(Object.keys(resolved)).not.toContain("http");
    expect(Object.keys(resolved)).not.toContain("install");
  });

  it("serves /metrics on 127.0.0.1:9187 unless told otherwise, and installs only when asked", () => {
    expect(configure(["relay"], {}).http).toEqual({ host: "127.0.0.1", port: 9187 });
    expect(configure(["relay"], { RELAY_HTTP: "off" }).http).toBeNull();
    expect(configure(["relay", "--http", "[::1]:9000"], { RELAY_HTTP: "off" }).http).toEqual({ host: "::1", port: 9000 });
    expect(configure(["relay"], {}).install).toBe(false);
    expect(configure(["relay", "--install"], {}).install).toBe(true);
    for (const [value, install] of [
      ["1", true],
      ["true", true],
      ["yes", false],
      ["0", false],
      ["", false],
    ] as const) {
      expect(configure(["relay"], { RELAY_INSTALL: value }).install).toBe(install);
    }
  });

  it("says how to set the database URL for install and backfill as for relay", () => {
    expect(refusal(() => requireOption("databaseUrl", undefined))).toBe(
      "DATABASE_URL is not set: pass --database-url postgres://user:password@host:5432/db or set DATABASE_URL",
    );
    expect(requireOption("databaseUrl", GOOD.databaseUrl)).toBe(GOOD.databaseUrl);
  });

  it("reads the command and its operand", () => {
    expect(optionsFromArgs([], ENV)).toMatchObject({ command: "relay", operand: undefined, help: false });
    expect(optionsFromArgs(["backfill", "public.todos"], ENV)).toMatchObject({ command: "backfill", operand: "public.todos" });
    expect(optionsFromArgs(["-h"], {})).toMatchObject({ help: true });
  });
});

/** The table's row of `key`. */
function specOf<K extends keyof Settings>(key: K): OptionSpec<Settings[K]> {
  return OPTIONS[key];
}

/** An option's default as --help shows it, or null when it is required. */
function shownDefault<K extends keyof Settings>(key: K): string | null {
  const spec = specOf(key);
  return spec.required !== undefined ? null : spec.kind.show(spec.default);
}

describe("the options table", () => {
  const keys = optionKeys(OPTIONS);

  it("is all in --help: each option's flag, variable and default", () => {
    const lines = USAGE.split("\n");
    for (const key of keys) {
      const { flag, env } = OPTIONS[key];
      const line = lines.find((l) => l.startsWith(`  --${flag} `));
      expect(line, flag).toBeDefined();
      expect(line!.split(/ +/).slice(1, 3)).toEqual([`--${flag}`, env]);
      const shown = shownDefault(key);
      expect(line!.endsWith(shown === null ? " (required)" : ` [default: ${shown}]`), line).toBe(true);
    }
    // And nothing else is listed as an option.
    expect(lines.filter((l) => /^ {2}--/.test(l)).length).toBe(keys.length);
  });

  it("is the README's relay configuration table: each option's flag, variable and default, and no other row", () => {
    const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
    const section = readme.slice(readme.indexOf("### Relay (flag, or environment variable"), readme.indexOf("### Worker ("));
    const rows = section.split("\n").filter((l) => l.startsWith("| `--"));
    expect(rows.length).toBe(keys.length);
    for (const key of keys) {
      const { flag, env } = OPTIONS[key];
      const row = rows.find((r) => r.startsWith(`| \`--${flag}\` |`));
      expect(row, flag).toBeDefined();
      const [envCell, defaultCell] = row!
        .split("|")
        .slice(2, 4)
        .map((c) => c.trim());
      // A switch's variable may show the value that turns it on (`RELAY_INSTALL=1`).
      expect(envCell).toMatch(new RegExp(`^\`${env}(=[^\`]+)?\`$`));
      const shown = shownDefault(key);
      expect(defaultCell, flag).toBe(shown === null ? "required" : /^(\d+|none|off)$/.test(shown) ? shown : `\`${shown}\``);
    }
  });
});
