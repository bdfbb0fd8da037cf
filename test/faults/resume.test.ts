/**
 * Resume with the real client (partysocket in Node) whose TCP connection is cut while events
 * flow: it receives exactly what it missed, from the channel's replay log. When the log cannot
 * cover the gap, or the channel's history was replaced, it is told to reset, reloads, and goes on.
 */
import { expect, it } from "vitest";
import { recordingClient } from "../support/client.ts";
import { caughtUp, relayEvent } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

const stack = useStack({
  database: "resume",
  // A small replay log, so a long enough cut outgrows it.
  worker: { REPLAY_MAX_EVENTS: "300" },
  ingestProxy: true,
  clientProxy: true,
  relay: { batchSize: 25 },
});

/** A client through the TCP proxy, recording what it is given. */
function client(channel: string) {
  const c = recordingClient({ host: stack.net.host, channel });
  return { ...c, events: c.seen.events, resets: c.seen.resets, statuses: c.seen.statuses };
}

it("replays exactly the events published while the connection was cut, while events keep flowing", async () => {
  const c = client("flow");
  try {
    await c.until(() => c.sub.status === "open", "open");
    const writing = writeNumbered(stack.db, "flow", 1, 900, 3);
    await c.until(() => c.events.length >= 150, "150 events");
    const acceptedBefore = stack.net.accepted;
    stack.net.cut({ refuse: true }); // the client is offline...
    await c.until(() => c.sub.status === "connecting", "the client to notice");
    const seenAtCut = c.events.length;
    await relayEvent(stack.relay, "batch", () => true); // ...while the relay keeps delivering
    await relayEvent(stack.relay, "batch", () => true);
    stack.net.restore();
    await writing;
    await c.until(() => c.events.length >= 900, "900 events");
    expectExactlyOnceInOrder(c.events, "flow", 900);
    expect(c.resets).toEqual([]);
    expect(seenAtCut).toBeLessThan(900);
    expect(stack.net.accepted).toBeGreaterThan(acceptedBefore);
  } finally {
    c.sub.close();
  }
});

it("resets with reason gap when the missed events outgrew the replay log, then continues live", async () => {
  const c = client("gap");
  try {
    await c.until(() => c.sub.status === "open", "open");
    await writeNumbered(stack.db, "gap", 1, 10);
    await c.until(() => c.events.length >= 10, "10 events");
    stack.net.cut({ refuse: true });
    await c.until(() => c.sub.status === "connecting", "the client to notice");
    await writeNumbered(stack.db, "gap", 11, 400, 10); // 390 missed > REPLAY_MAX_EVENTS=300
    await caughtUp(stack.relay);
    stack.net.restore();
    const [reset] = await c.until(() => c.resets.length > 0 && c.resets, "a reset");
    expect(reset).toMatchObject({ reason: "gap", seq: 400 });
    // After a reset the client reloads (here: the count it would query), then applies new events.
    await writeNumbered(stack.db, "gap", 401, 410);
    await c.until(() => c.events.length >= 20, "events after the reset");
    expect(c.events.map((e) => (e.data as { n: number }).n)).toEqual([
      ...Array.from({ length: 10 }, (_, i) => i + 1),
      ...Array.from({ length: 10 }, (_, i) => 401 + i),
    ]);
    expect(c.sub.seq).toBe(410);
  } finally {
    c.sub.close();
  }
});

it("resets with reason epoch when the channel's history was replaced (a Worker with fresh storage)", async () => {
  const c = client("epoch");
  let fresh: TestWorker | null = null;
  try {
    await c.until(() => c.sub.status === "open", "open");
    await writeNumbered(stack.db, "epoch", 1, 5);
    await c.until(() => c.events.length >= 5, "5 events");
    const oldEpoch = c.sub.epoch;
    fresh = await startTestWorker({ REPLAY_MAX_EVENTS: "300" });
    stack.ingestProxy.target = fresh.url;
    stack.net.retarget(fresh.url);
    stack.net.cut();
    const [reset] = await c.until(() => c.resets.length > 0 && c.resets, "a reset");
    expect(reset).toMatchObject({ reason: "epoch", seq: 0 });
    expect(c.sub.epoch).not.toBe(oldEpoch);
    await writeNumbered(stack.db, "epoch", 6, 8);
    await c.until(() => c.events.length >= 8, "events in the new epoch");
    expect(c.events.slice(5).map((e) => [e.seq, (e.data as { n: number }).n])).toEqual([
      [1, 6],
      [2, 7],
      [3, 8],
    ]);
  } finally {
    c.sub.close();
    stack.ingestProxy.target = stack.worker.url;
    stack.net.retarget(stack.worker.url);
    await fresh?.dispose();
  }
});
