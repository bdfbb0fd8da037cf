/**
 * Retained state, filters, presence and broadcast through the whole stack and the real client:
 * Postgres -> relay -> Worker -> Channel -> partysocket in Node.
 */
import { expect, it } from "vitest";
import { mintToken } from "../../token/index.ts";
import { recordingClient } from "../support/client.ts";
import { caughtUp } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TEST_JWT_SECRET } from "../support/worker.ts";

const stack = useStack({
  database: "features",
  worker: { PUBLIC_CHANNELS: "" },
  clientProxy: true,
  setup: `
    create table items (id int primary key, title text not null, done boolean not null default false);
    insert into items values (1, 'existed before the watch', false), (2, 'done already', true);
  `,
  relay: {},
});

const token = (sub: string, extra: { publish?: string[] } = {}) => mintToken({ secret: TEST_JWT_SECRET, sub, channels: ["items", "room"], ...extra });

/** A client through the TCP proxy, with a token for `sub`. */
const client = (channel: string, options: Partial<Parameters<typeof recordingClient>[0]> & { sub: string; publish?: string[] }) =>
  recordingClient({ host: stack.net.host, channel, token: () => token(options.sub, { publish: options.publish }), ...options });

it("backfills a table's existing rows into a retaining channel: a new client gets them as a snapshot, then live changes", async () => {
  await stack.db.sql("select realtime.watch('items', retain => true)");
  expect(await stack.db.sql("select realtime.backfill('items') as n")).toEqual([{ n: "2" }]);
  await caughtUp(stack.relay);
  const c = client("items", { sub: "reader" });
  try {
    const [snapshot] = await c.until(() => c.seen.snapshots.length > 0 && c.seen.snapshots, "a snapshot");
    expect(snapshot!.rows.map((r) => r.row)).toEqual([
      { id: 1, title: "existed before the watch", done: false },
      { id: 2, title: "done already", done: true },
    ]);
    await stack.db.sql("update items set done = true where id = 1");
    const [e] = await c.until(() => c.seen.events.length > 0 && c.seen.events, "the update");
    expect(e!.seq).toBe(snapshot!.seq + 1);
    expect((e!.data as { new: { done: boolean } }).new.done).toBe(true);
  } finally {
    c.sub.close();
  }
});

it("filters what the client asked for, in the snapshot and live", async () => {
  const c = client("items", { sub: "filtered", filter: { done: { eq: false } } });
  try {
    const [snapshot] = await c.until(() => c.seen.snapshots.length > 0 && c.seen.snapshots, "a snapshot");
    expect(snapshot!.rows).toEqual([]); // both rows are done by now
    await stack.db.sql("insert into items values (3, 'open', false), (4, 'closed', true)");
    const events = await c.until(() => c.seen.events.length > 0 && c.seen.events, "an event");
    await caughtUp(stack.relay);
    expect(events.map((e) => (e.data as { new: { id: number } }).new.id)).toEqual([3]);
  } finally {
    c.sub.close();
  }
});

it("keeps presence right when a member's connection is cut abruptly, and relays broadcasts between clients", async () => {
  const alice = client("room", { sub: "alice", presence: { state: { name: "Alice" } }, publish: ["room"] });
  const bob = client("room", { sub: "bob", presence: { state: { name: "Bob" } }, socket: { maxRetries: 0 } });
  try {
    await alice.until(() => alice.seen.members.length === 2 && alice.seen.members.every((m) => m.state), "two members with state");
    expect(alice.seen.members.map((m) => (m.state as { name: string }).name).sort()).toEqual(["Alice", "Bob"]);

    alice.sub.broadcast("wave", { hello: "bob" });
    const [b] = await bob.until(() => bob.seen.broadcasts.length > 0 && bob.seen.broadcasts, "a broadcast");
    expect(b).toMatchObject({ event: "wave", data: { hello: "bob" }, from: { user: "alice", id: alice.sub.member } });

    // Cut every TCP connection: no close frame reaches the Worker for either. Alice reconnects
    // (a new member); Bob, with no retries, is gone and must be dropped from the list.
    stack.net.cut();
    await alice.until(() => alice.seen.members.length === 1 && alice.seen.members[0]!.user === "alice", "bob's leave");
    expect(alice.seen.members[0]!.id).toBe(alice.sub.member);
  } finally {
    alice.sub.close();
    bob.sub.close();
  }
});
