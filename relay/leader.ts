/**
 * Leader election: relays with the same cursor name share one cursor, and one of them leads
 * through a Postgres advisory lock held by its session's query connection. The others stand by
 * and try again every --standby-poll; a leader's lock goes with its session, so a standby takes
 * over once that session ends.
 */
import type { Session } from "./session.ts";
import type { SourceContext } from "./sources/source.ts";

/** Waits until `session` holds the lock of the relay's cursor name; false if the relay stopped first. */
export async function acquireLead(session: Session, ctx: Pick<SourceContext, "cursorName" | "options" | "signal" | "log" | "emit">): Promise<boolean> {
  const { cursorName: name, signal, log, emit } = ctx;
  let announced = false;
  while (!(await session.tryLock(name))) {
    if (!announced) {
      log.info("another relay leads; standing by", { name });
      emit("standby");
      announced = true;
    }
    await session.waitFor(ctx.options.standbyPollMs, signal);
    if (signal.aborted) return false;
  }
  log.info("leading", { name });
  emit("leader");
  return true;
}
