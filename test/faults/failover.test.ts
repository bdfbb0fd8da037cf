/**
 * High availability: two relay processes on one database. One leads (advisory lock), the other
 * stands by; SIGKILL the leader mid-burst and the standby takes over, with nothing lost or
 * duplicated. With the default --standby-poll (1 s) the takeover is expected within about a
 * second of the leader's database session ending (README: "Run the relay beside your database").
 */
import { expect, it } from "vitest";
import { type CliProcess, spawnCli } from "../support/relay.ts";
import { useStack } from "../support/stack.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { TEST_SECRET } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

const stack = useStack({ database: "failover", worker: {} });

const relay = (): CliProcess =>
  spawnCli(["relay"], {
    DATABASE_URL: stack.db.url,
    WORKER_URL: stack.worker.url,
    INGEST_SECRET: TEST_SECRET,
    RELAY_BATCH_SIZE: "50",
    RELAY_POLL_INTERVAL_MS: "200",
  });

it("hands over to the standby when the leader is SIGKILLed mid-burst, losing and duplicating nothing", async () => {
  const subs = await Promise.all(["ha-a", "ha-b"].map((c) => TestSubscriber.connect(stack.worker.url, c)));
  const relays = [relay(), relay()];
  try {
    // Either may win the lock; the other stands by.
    await Promise.all(relays.map((r) => r.waitForLog(["leading", "another relay leads; standing by"])));
    const leader = relays.find((r) => r.output().includes('"msg":"leading"'))!;
    const standby = relays.find((r) => r !== leader)!;
    expect(standby.output()).toContain("another relay leads; standing by");
    expect(standby.output()).not.toContain('"msg":"leading"');
    const writing = Promise.all([writeNumbered(stack.db, "ha-a", 1, 2000, 4), writeNumbered(stack.db, "ha-b", 1, 2000, 4)]);
    await subs[0]!.eventCount(500, 60_000);
    const killedAt = Date.now();
    leader.kill("SIGKILL");
    await standby.waitForLog("leading");
    const takeoverMs = Date.now() - killedAt;
    await writing;
    expectExactlyOnceInOrder(await subs[0]!.eventCount(2000, 60_000), "ha-a", 2000);
    expectExactlyOnceInOrder(await subs[1]!.eventCount(2000, 60_000), "ha-b", 2000);
    expect(subs[0]!.events.length).toBe(2000);
    // Informational, for the README's figure; the bound is the wait above, not a timing assertion.
    process.stdout.write(`failover: standby led ${takeoverMs} ms after the leader was killed\n`);
  } finally {
    for (const r of relays) r.kill("SIGKILL");
    for (const s of subs) s.close();
  }
});

it("lets exactly one of several relays started together lead", async () => {
  const relays = [relay(), relay(), relay()];
  try {
    await Promise.all(relays.map((r) => r.waitForLog(["leading", "another relay leads; standing by"])));
    const leaders = relays.filter((r) => r.output().includes('"msg":"leading"'));
    expect(leaders).toHaveLength(1);
  } finally {
    for (const r of relays) r.kill("SIGKILL");
  }
});
