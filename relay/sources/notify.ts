/**
 * The NOTIFY source: forwards plain Postgres NOTIFY channels (--notify), at most once as NOTIFY
 * itself. Payloads queue in memory, bounded by --notify-queue-max, while the Worker is unreachable;
 * the queue outlives a reconnect, and a notification sent while no session listens is gone.
 */
import { randomUUID } from "node:crypto";
import { isJson } from "../../protocol/index.ts";
import { type OutgoingEvent, StoppedError } from "../ingest-client.ts";
import type { Session } from "../session.ts";
import type { Source, SourceContext } from "./source.ts";

export class NotifySource implements Source {
  readonly listens: readonly string[];
  private queue: OutgoingEvent[] = [];

  constructor(private readonly ctx: SourceContext) {
    const { notify, partition } = ctx.options;
    // NOTIFY payloads have no id to deduplicate: of a partitioned set, only partition 0 forwards them.
    this.listens = !partition || partition.index === 0 ? notify.map((r) => r.pgChannel) : [];
  }

  onNotification(session: Session, pgChannel: string, payload: string): void {
    const { options, log, emit } = this.ctx;
    const route = options.notify.find((r) => r.pgChannel === pgChannel);
    if (!route) return;
    // NOTIFY payloads are text; JSON is forwarded as the JSON text it is, anything else as a string.
    const data = isJson(payload) ? payload : JSON.stringify(payload);
    this.queue.push({ id: randomUUID(), channel: route.channel, event: "notify", data, ts: Date.now() });
    if (this.queue.length > options.notifyQueueMax) {
      const count = this.queue.length - options.notifyQueueMax;
      this.queue.splice(0, count);
      log.warn("NOTIFY queue full, oldest payloads dropped", { count });
      emit("dropped", { count });
    }
    session.wake("notify");
  }

  async run(session: Session): Promise<void> {
    const { options, emit, signal } = this.ctx;
    if (this.listens.length === 0) return;
    while (!signal.aborted && !session.closed) {
      if (this.queue.length === 0) {
        await session.waitFor(options.pollIntervalMs, signal, "notify");
        continue;
      }
      const events = this.queue.slice(0, options.batchSize);
      try {
        emit("batch", await this.ctx.deliver("notify", events));
      } catch (err) {
        if (err instanceof StoppedError) return;
        throw err;
      }
      // Remove what was sent; the queue may have been trimmed from the front meanwhile.
      const sent = new Set(events.map((e) => e.id));
      this.queue = this.queue.filter((e) => !sent.has(e.id));
    }
  }
}
