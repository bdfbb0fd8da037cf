/**
 * Structured JSON logs (pino), one object per line: `{"level":"info","time":"…","msg":"…",…}`.
 * Callers pass only safe values (a URL goes through redactUrl first); the redact list below is a
 * second line of defence for a field that should never have been logged.
 */
import pino from "pino";

/** Log levels, least to most severe. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;

/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** What the relay writes its logs to. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** A logger writing JSON lines at or above `level` to `write` (default: stderr). */
export function createLogger(level: LogLevel = "info", write?: (line: string) => void): Logger {
  const logger = pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ["secret", "ingestSecret", "password", "token", "*.secret", "*.ingestSecret", "*.password", "*.token"], censor: "***" },
    },
    write ? { write: (line: string) => write(line.trimEnd()) } : pino.destination({ fd: 2, sync: true }),
  );
  const at = (lvl: Exclude<LogLevel, "silent">) => (msg: string, fields?: Record<string, unknown>) => logger[lvl](fields ?? {}, msg);
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A database URL with its password replaced, fit for a log line or an error message. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<unparseable URL>";
  }
}
