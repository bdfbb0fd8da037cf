/** Command-line and environment parsing for the relay CLI; every option comes from relay/options.ts. */
import { type ParseArgsConfig, parseArgs } from "node:util";
import { MIN_JWT_SECRET_LENGTH } from "../protocol/index.ts";
import { type HttpListen, RelayConfigError, type RelayOptions } from "./config.ts";
import { CLI_OPTIONS, OPTIONS, type OptionSpec, optionKeys, RELAY_OPTIONS, type Settings } from "./options.ts";

/** One line of the options' list: the flag, the variable, what it does. */
function helpLine(left: string, env: string, doc: string): string {
  return `  ${left.padEnd(20)} ${env.padEnd(25)} ${doc}`;
}

/** An option's --help line: its text, then " (required)" or its default. */
function optionHelp<K extends keyof Settings>(key: K): string {
  const spec: OptionSpec<Settings[K]> = OPTIONS[key];
  const shown = spec.required !== undefined ? " (required)" : ` [default: ${spec.kind.show(spec.default)}]`;
  return helpLine(`--${spec.flag}`, spec.env, `${spec.help}${shown}`);
}

/** The --help text. */
export const USAGE = `Usage: pg-edge-realtime <command> [options]

Commands:
  relay      read the outbox or the WAL (and NOTIFY channels) and POST signed batches to the Worker
  install    install or upgrade the realtime schema (idempotent; same as psql -f sql/realtime.sql)
  token      print a browser token: token --sub <user> --channels todos,tenant:42 [--ttl 3600]
             (HS256 with JWT_SECRET, the Worker's secret)
  backfill   backfill <schema.table>: write a watched table's current rows to the outbox, in
             pages of 1000, with progress (realtime.backfill_page)
  init       init [dir]: add realtime to the Worker project in dir (default: here): the Durable
             Object bindings and migration in wrangler.toml (appended, never overwritten), and
             for a new project wrangler.toml, src/index.ts and .dev.vars.example

Options (each also read from the environment variable shown; the flag wins):
${optionKeys(OPTIONS).map(optionHelp).join("\n")}
${helpLine("-h, --help", "", "show this help")}
`;

/** What the command line asks for. */
export interface CliArgs {
  command: string;
  operand: string | undefined;
  /** The relay's options given by flag or variable; the others take their defaults when resolved. */
  options: Partial<RelayOptions>;
  install: boolean;
  help: boolean;
  http: HttpListen | null;
}

/** The flags parseArgs reads: a string each, or nothing for a switch. */
const FLAGS = Object.fromEntries(
  optionKeys(OPTIONS).map((k) => [OPTIONS[k].flag, { type: OPTIONS[k].kind.switch ? ("boolean" as const) : ("string" as const) }]),
);

/** parseArgs, its errors as RelayConfigError with `hint` appended. */
function parseOrExplain<T extends ParseArgsConfig>(config: T, hint: string): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (err) {
    throw new RelayConfigError(`${(err as Error).message} (${hint})`);
  }
}

/** Turns argv and the environment into relay options; throws RelayConfigError. */
export function optionsFromArgs(argv: string[], env: NodeJS.ProcessEnv): CliArgs {
  const parsed = parseOrExplain(
    { args: argv, allowPositionals: true, strict: true, options: { ...FLAGS, help: { type: "boolean", short: "h" } } },
    "see --help",
  );
  const command = parsed.positionals[0] ?? "relay";
  const operands = command === "backfill" || command === "init" ? 1 : 0;
  if (!["relay", "install", "backfill", "init"].includes(command) || parsed.positionals.length > 1 + operands) {
    throw new RelayConfigError(`unknown command ${JSON.stringify(parsed.positionals.join(" "))}: use relay, install, backfill, init or token (see --help)`);
  }
  const values: Given = parsed.values;
  const options: Partial<RelayOptions> = {};
  for (const key of optionKeys(RELAY_OPTIONS)) {
    const value = read(key, values, env);
    if (value !== undefined) put(options, key, value);
  }
  const http = read("http", values, env);
  const install = read("install", values, env);
  return {
    command,
    operand: parsed.positionals[1],
    options,
    // null is a value here (--http off), not "unset"
    http: http === undefined ? CLI_OPTIONS.http.default : http,
    install: install === undefined ? CLI_OPTIONS.install.default : install,
    help: Boolean(parsed.values.help),
  };
}

/** The flags' values as parseArgs gives them. */
type Given = Record<string, string | boolean | undefined>;

/**
 * An option's value from its flag, else its variable; undefined when neither is set (an empty
 * text counts as not set, unless the option's kind says otherwise).
 */
function read<K extends keyof Settings>(key: K, values: Given, env: NodeJS.ProcessEnv): Settings[K] | undefined {
  const spec: OptionSpec<Settings[K]> = OPTIONS[key];
  const flag = values[spec.flag];
  const text = flag === true ? "true" : typeof flag === "string" ? flag : env[spec.env];
  if (text === undefined || (text === "" && !spec.kind.emptyIsValue)) return undefined;
  return spec.kind.parse(text, `--${spec.flag} (${spec.env})`);
}

function put<K extends keyof RelayOptions>(options: Partial<RelayOptions>, key: K, value: RelayOptions[K]): void {
  options[key] = value;
}

/** Options of the `token` command. */
export interface TokenArgs {
  secret: string;
  sub: string;
  channels: string[];
  ttlSeconds: number;
}

/** Parses `token --sub … --channels … [--ttl …] [--jwt-secret …]`; throws RelayConfigError. */
export function tokenArgs(argv: string[], env: NodeJS.ProcessEnv): TokenArgs {
  const { values } = parseOrExplain(
    {
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { sub: { type: "string" }, channels: { type: "string" }, ttl: { type: "string" }, "jwt-secret": { type: "string" } },
    },
    "usage: token --sub <user> --channels a,b [--ttl seconds]",
  );
  const secret = values["jwt-secret"] ?? env.JWT_SECRET ?? "";
  if (secret.length < MIN_JWT_SECRET_LENGTH) {
    throw new RelayConfigError(`JWT_SECRET is not set (or shorter than ${MIN_JWT_SECRET_LENGTH} characters): use the Worker's JWT_SECRET`);
  }
  if (!values.sub) throw new RelayConfigError("--sub is required: the user the token is for");
  const channels = (values.channels ?? "")
    .split(",")
    .map((c) => c.trim())
    .filter(Boolean);
  if (channels.length === 0) throw new RelayConfigError("--channels is required: the channels (or patterns) the token may join, comma-separated");
  const ttl = values.ttl ?? "3600";
  if (!/^\d+$/.test(ttl) || Number(ttl) < 1) throw new RelayConfigError(`--ttl must be a whole number of seconds, got ${JSON.stringify(ttl)}`);
  return { secret, sub: values.sub, channels, ttlSeconds: Number(ttl) };
}
