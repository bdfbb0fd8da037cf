/**
 * Structured logs for the Worker and its Durable Objects: one JSON object per line (Workers Logs
 * and `wrangler tail` index JSON). Callers pass only what is safe to keep: never a secret, a token,
 * or a request body.
 */

/** Severity of a log line. */
export type Level = "debug" | "info" | "warn" | "error";

/** Writes one log line. */
export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  const line = JSON.stringify({ level, msg, ...fields });
  if (level === "error") console.error(line);
  else if (level === "warn") console.warn(line);
  else console.log(line);
}
