/**
 * Hibernation, inside workerd: sockets left idle while the object is evicted (again and again)
 * keep receiving every event, seq continues, and replay still works; the replay log's age bound
 * turns a too-old gap into a reset.
 */

import { evictDurableObject, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { expect, it } from "vitest";
import type { ChannelEvent } from "../../protocol/index.ts";
import { event, ingest, Socket } from "../worker/helpers.ts";

const stubOf = (channel: string) => env.CHANNEL.get(env.CHANNEL.idFromName(channel));
const ns = (events: ChannelEvent[]) => events.map((e) => e.data as number);
const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

it("delivers every event, once, in order, to sockets idle across five evictions, and replays to one that left", async () => {
  const stay = await Promise.all([Socket.open("hib-ledger"), Socket.open("hib-ledger"), Socket.open("hib-ledger")]);
  const [welcome] = await stay[0]!.frameCount(1);
  const epoch = (welcome as { epoch: string }).epoch;
  const leaver = await Socket.open("hib-ledger");
  await leaver.frameCount(1);
  let n = 0;
  for (let round = 0; round < 5; round++) {
    await ingest(Array.from({ length: 20 }, () => event("hib-ledger", ++n)));
    if (round === 2) leaver.ws.close(); // gone after 60 events
    await evictDurableObject(stubOf("hib-ledger"));
  }
  for (const s of stay) {
    const events = await s.eventCount(100);
    expect(ns(events)).toEqual(upTo(100));
    expect(events.map((e) => e.seq)).toEqual(upTo(100));
  }
  // The worker test project keeps REPLAY_MAX_EVENTS=50: the last 40 are still in the log.
  const back = await Socket.open("hib-ledger", `?since=60&epoch=${epoch}`);
  expect(ns(await back.eventCount(40))).toEqual(upTo(100).slice(60));
  expect(back.frames[0]).toMatchObject({ type: "welcome", seq: 100, epoch });
});

it("answers reset {reason: gap} when the missed events are older than REPLAY_MAX_AGE_SECONDS", async () => {
  const first = await Socket.open("hib-age");
  const [welcome] = await first.frameCount(1);
  first.ws.close();
  await ingest([event("hib-age", 1), event("hib-age", 2)]);
  // Age the log by two days inside the object (the default bound is one day).
  await runInDurableObject(stubOf("hib-age"), (_, state) => {
    state.storage.sql.exec("update log set stored_at = stored_at - ?", 2 * 86_400_000);
  });
  await evictDurableObject(stubOf("hib-age"));
  const back = await Socket.open("hib-age", `?since=0&epoch=${(welcome as { epoch: string }).epoch}`);
  expect((await back.frameCount(2))[1]).toMatchObject({ type: "reset", reason: "gap", seq: 2 });
  expect(back.events).toEqual([]);
});
