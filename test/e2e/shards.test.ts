/**
 * A sharded channel through the whole stack: 4 shards x 500 sockets on one channel behind the real
 * Worker, fed by the relay: every socket gets the same sequence, nothing lost; a client that
 * reconnects onto another shard resumes exactly; and a channel configured with no shards grows
 * onto shards by itself past AUTO_SHARD_SOCKETS (100 here).
 */
import { expect, it } from "vitest";
import { SIGNATURE_HEADER, signBody } from "../../protocol/index.ts";
import { writeNumbered } from "../faults/ledger.ts";
import { recordingClient } from "../support/client.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { TEST_SECRET } from "../support/worker.ts";

const stack = useStack({
  database: "shards",
  worker: { SHARDS: "live:*=4", MAX_SOCKETS_PER_CHANNEL: "1000", AUTO_SHARD_SOCKETS: "100" },
  clientProxy: true,
  relay: {},
});

async function stats(channel: string): Promise<{ shards: number; sockets: number; seq: number }> {
  const path = `/channels/${channel}/stats`;
  const res = await fetch(`${stack.worker.url}${path}`, { headers: { [SIGNATURE_HEADER]: await signBody(TEST_SECRET, `GET ${path}`) } });
  return (await res.json()) as { shards: number; sockets: number; seq: number };
}

it("delivers the same 300 events, in order, to 2,000 sockets spread over 4 shards", async () => {
  const sockets: TestSubscriber[] = [];
  try {
    for (let i = 0; i < 2000; i += 100)
      sockets.push(...(await Promise.all(Array.from({ length: 100 }, () => TestSubscriber.connect(stack.worker.url, "live:score")))));
    const perShard = [0, 1, 2, 3].map((i) => sockets.filter((s) => (s.welcome as { shard?: number }).shard === i).length);
    expect(perShard.every((n) => n > 300)).toBe(true); // spread at random: ~500 each
    expect(await stats("live:score")).toMatchObject({ shards: 4, sockets: 2000 });

    await writeNumbered(stack.db, "live:score", 1, 300, 10);
    const reference = (await sockets[0]!.eventCount(300, 60_000)).map((e) => `${e.seq}:${e.id}`);
    expect(reference.map((r) => Number(r.split(":")[0]))).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    for (const s of sockets) expect((await s.eventCount(300, 60_000)).map((e) => `${e.seq}:${e.id}`)).toEqual(reference);
  } finally {
    for (const s of sockets) s.close();
  }
}, 180_000);

it("resumes a client exactly when its reconnect lands on another shard", async () => {
  const c = recordingClient({ host: stack.net.host, channel: "live:hop" });
  // The shard of each connection, from its welcome (listened to before the first one arrives).
  const shards: number[] = [];
  c.sub.socket.addEventListener("message", (m: MessageEvent) => {
    if (typeof m.data !== "string" || !m.data.startsWith("{")) return;
    const f = JSON.parse(m.data) as { type: string; shard?: number };
    if (f.type === "welcome" && f.shard !== undefined) shards.push(f.shard);
  });
  try {
    // (the welcome's "open" status is what wakes `until`; this listener runs right after it)
    const opens = () => c.seen.statuses.filter((x) => x === "open").length;
    await c.until(() => opens() === 1, "the first welcome");
    let n = 0;
    // Events flow; the connection is cut until a reconnect lands on a different shard.
    for (let attempt = 0; attempt < 40 && shards.every((s) => s === shards[0]); attempt++) {
      await writeNumbered(stack.db, "live:hop", n + 1, n + 10);
      n += 10;
      const before = opens();
      stack.net.cut();
      await c.until(() => opens() > before, "the reconnect's welcome");
    }
    expect(new Set(shards).size).toBeGreaterThan(1);
    await writeNumbered(stack.db, "live:hop", n + 1, n + 10);
    n += 10;
    await c.until(() => c.seen.events.length >= n, `${n} events`);
    expect(c.seen.events.map((e) => (e.data as { n: number }).n)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    expect(c.seen.resets).toEqual([]);
  } finally {
    c.sub.close();
  }
});

it("grows a channel onto shards by itself past AUTO_SHARD_SOCKETS, filling each before the next", async () => {
  const sockets: TestSubscriber[] = [];
  try {
    for (let i = 0; i < 350; i += 50) sockets.push(...(await Promise.all(Array.from({ length: 50 }, () => TestSubscriber.connect(stack.worker.url, "crowd")))));
    const on = (shard: number | undefined) => sockets.filter((s) => (s.welcome as { shard?: number }).shard === shard).length;
    // The root keeps 100, then shard 0 fills to 100, shard 1 to 100, and shard 2 takes the rest.
    expect([on(undefined), on(0), on(1), on(2)]).toEqual([100, 100, 100, 50]);
    expect(await stats("crowd")).toMatchObject({ shards: 3, sockets: 350 });

    await writeNumbered(stack.db, "crowd", 1, 200, 10);
    const reference = (await sockets[0]!.eventCount(200, 60_000)).map((e) => `${e.seq}:${e.id}`);
    expect(reference.map((r) => Number(r.split(":")[0]))).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    for (const s of sockets) expect((await s.eventCount(200, 60_000)).map((e) => `${e.seq}:${e.id}`)).toEqual(reference);

    // A client of shard 2 leaves, events go on, and it comes back (on shard 2 again, the least
    // full): it gets exactly what it missed.
    const leaver = sockets.find((s) => (s.welcome as { shard?: number }).shard === 2)!;
    const { epoch } = leaver.welcome;
    leaver.close();
    await writeNumbered(stack.db, "crowd", 201, 220, 10);
    await sockets[0]!.eventCount(220, 60_000);
    const back = await TestSubscriber.connect(stack.worker.url, "crowd", { since: "200", epoch });
    sockets.push(back);
    expect((back.welcome as { shard?: number }).shard).toBe(2);
    expect((await back.eventCount(20, 60_000)).map((e) => e.seq)).toEqual(Array.from({ length: 20 }, (_, i) => 201 + i));
  } finally {
    for (const s of sockets) s.close();
  }
}, 180_000);
