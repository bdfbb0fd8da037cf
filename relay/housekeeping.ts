/**
 * Housekeeping of the leading relay: deletes delivered outbox rows past --retention, in bounded
 * statements (relay/outbox.ts, pruneDelivered). It runs on the listener connection so that a prune
 * never delays the outbox reader's next read. It runs behind the sources' interface.
 */
import { pruneDelivered } from "./outbox.ts";
import type { Session } from "./session.ts";
import type { Source, SourceContext } from "./sources/source.ts";

export class Housekeeping implements Source {
  constructor(private readonly ctx: SourceContext) {}

  async run(session: Session): Promise<void> {
    const { options, log, emit, signal } = this.ctx;
    const { retentionSeconds, pruneBatch, pruneIntervalMs } = options;
    while (!signal.aborted && !session.closed) {
      let rows = 0;
      let statements = 0;
      for (;;) {
        const deleted = await pruneDelivered(session.listener, retentionSeconds, pruneBatch);
        rows += deleted;
        statements++;
        if (deleted < pruneBatch || signal.aborted || session.closed) break;
      }
      if (rows > 0) log.info("pruned delivered outbox rows", { rows, statements });
      emit("pruned", { rows, statements });
      await session.waitFor(pruneIntervalMs, signal, "prune");
    }
  }
}
