/**
 * The channels this installation has delivered to (realtime.channels): the ones told of a loss at
 * the source (a lost replication slot, relay/sources/slot-recovery.ts).
 */
import type { Session } from "./session.ts";

/** Records channel names the first time this process delivers to them. */
export class KnownChannels {
  /** Channel names already in realtime.channels. */
  private readonly known = new Set<string>();

  /** Known names cost nothing; new ones one insert, on the listener connection. */
  async remember(session: Session | null, channels: Iterable<string>): Promise<void> {
    const fresh = [...new Set(channels)].filter((c) => !this.known.has(c));
    if (fresh.length === 0 || !session || session.closed) return;
    await session.listener.query("insert into realtime.channels (name) select unnest($1::text[]) on conflict (name) do nothing", [fresh]);
    for (const c of fresh) this.known.add(c);
  }
}
