/**
 * Bookkeeping for fault tests: write numbered events per channel, and check that a subscriber
 * received exactly those, each once, in order, with gapless seqs.
 */
import { expect } from "vitest";
import type { ChannelEvent } from "../../protocol/index.ts";
import type { TestDatabase } from "../support/db.ts";

/** Data of a numbered event. */
export interface Numbered {
  channel: string;
  n: number;
}

/**
 * Publishes `n = from..to` on `channel` from one connection, `perTx` events per transaction, so
 * the channel's commit order is exactly 1, 2, 3, ...
 */
export async function writeNumbered(db: TestDatabase, channel: string, from: number, to: number, perTx = 1): Promise<void> {
  const c = await db.client();
  for (let n = from; n <= to; n += perTx) {
    const last = Math.min(to, n + perTx - 1);
    await c.query(
      "select realtime.publish($1, 'n', jsonb_build_object('channel', $1::text, 'n', g)) from generate_series($2::int, $3::int) g",
      [channel, n, last],
    );
  }
}

/** Asserts `events` are exactly `n = 1..count` of `channel`, once each, in order, seqs gapless. */
export function expectExactlyOnceInOrder(events: readonly ChannelEvent[], channel: string, count: number): void {
  const ns = events.map((e) => (e.data as Numbered).n);
  const missing = count - new Set(ns).size;
  const duplicates = ns.length - new Set(ns).size;
  expect({ channel, received: ns.length, missing, duplicates }).toEqual({ channel, received: count, missing: 0, duplicates: 0 });
  expect(ns).toEqual(Array.from({ length: count }, (_, i) => i + 1));
  expect(new Set(events.map((e) => e.id)).size).toBe(count);
  for (let i = 1; i < events.length; i++) expect(events[i]!.seq).toBe(events[i - 1]!.seq + 1);
}
