/**
 * A lost replication slot, made good: Postgres invalidates a slot that held more WAL than
 * max_slot_wal_keep_size (or on a standby's conflict), and the events written since it fell
 * behind are gone. Rather than a silent hole, the relay makes a new slot and every channel it
 * delivered to starts a new epoch (its clients reset and reload), and the retaining watches' rows
 * are captured again.
 */
import { createHash, randomUUID } from "node:crypto";
import type { Session } from "../session.ts";
import type { SourceContext } from "./source.ts";

/**
 * Drops `slot` if Postgres invalidated it (ensureWalCapture then makes it anew) and records the
 * loss in realtime.slot_epochs, to be announced.
 */
export async function replaceLostSlot(ctx: SourceContext, session: Session, slot: string): Promise<void> {
  const { rows } = await session.query.query<{ s: Record<string, unknown> }>("select to_jsonb(s) as s from pg_replication_slots s where slot_name = $1", [
    slot,
  ]);
  const state = rows[0]?.s;
  if (!state || (state.wal_status !== "lost" && (state.invalidation_reason ?? null) === null)) return;
  const generation = `${Date.now().toString(36)}${randomUUID().slice(0, 4)}`;
  ctx.log.error("the replication slot was invalidated: events written since it fell behind are lost; making a new slot, and every channel starts a new epoch", {
    slot,
    walStatus: state.wal_status,
    reason: state.invalidation_reason ?? null,
    generation,
  });
  await session.query.query("select pg_drop_replication_slot($1)", [slot]);
  await session.query.query(
    "insert into realtime.slot_epochs (slot, generation, announced, lost_at) values ($1, $2, false, now()) on conflict (slot) do update set generation = excluded.generation, announced = false, lost_at = now()",
    [slot, generation],
  );
  ctx.emit("slotLost", { slot, generation });
}

/**
 * After a lost slot, tells every channel this installation delivered to (realtime.channels) that
 * its history has a hole: a reset notice each (they start a new epoch; their clients reset), then
 * captures the retaining watches' rows again, through the new slot. Done once per loss; a relay
 * stopped half-way does it again (the notices' ids are the same: channels drop repeats).
 */
export async function announceLostEvents(ctx: SourceContext, session: Session, slot: string, installId: string): Promise<void> {
  const { rows } = await session.query.query<{ generation: string }>("select generation from realtime.slot_epochs where slot = $1 and not announced", [slot]);
  const generation = rows[0]?.generation;
  if (!generation) return;
  const { rows: channels } = await session.query.query<{ name: string }>("select name from realtime.channels order by name");
  const data = JSON.stringify({ reason: "slot_lost", slot });
  const now = Date.now();
  const { batchSize } = ctx.options;
  for (let i = 0; i < channels.length; i += batchSize) {
    const notices = channels.slice(i, i + batchSize).map(({ name }) => ({
      id: `${installId}-lost-${generation}-${createHash("sha256").update(name).digest("hex").slice(0, 24)}`,
      channel: name,
      event: "reset",
      data,
      ts: now,
      reset: true,
    }));
    await ctx.post(notices);
  }
  const { rows: recaptured } = await session.query.query<{ n: string }>("select realtime.recapture_retained() as n");
  await session.query.query("update realtime.slot_epochs set announced = true where slot = $1 and generation = $2", [slot, generation]);
  ctx.log.warn("announced the lost events: channels start a new epoch, retained rows captured again", {
    slot,
    channels: channels.length,
    recapturedRows: Number(recaptured[0]?.n ?? 0),
  });
}
