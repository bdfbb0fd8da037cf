/**
 * SIGKILL the relay process in the middle of a sustained write burst, start it again: every event
 * arrives, none twice, in order per channel. The batch that was in flight when the relay died is
 * sent again by its successor, and the channels drop the copies.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { testDatabase, type TestDatabase } from "../support/db.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault-proxy.ts";
import { spawnCli, type CliProcess } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, TEST_SECRET, type TestWorker } from "../support/worker.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "./ledger.ts";

let db: TestDatabase;
let worker: TestWorker;
let proxy: FaultProxy;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("crash"), startTestWorker()]);
  proxy = await startFaultProxy(worker.url);
});

afterAll(async () => {
  await proxy?.close();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

function relayProcess(): CliProcess {
  return spawnCli(["relay"], {
    DATABASE_URL: db.url,
    WORKER_URL: proxy.url,
    INGEST_SECRET: TEST_SECRET,
    RELAY_BATCH_SIZE: "37",
    RELAY_POLL_INTERVAL_MS: "100",
    RELAY_RETRY_BASE_MS: "20",
    RELAY_RETRY_MAX_MS: "200",
  });
}

it("loses and duplicates nothing when the relay is SIGKILLed twice during a burst on 3 channels", async () => {
  const CHANNELS = ["crash-a", "crash-b", "crash-c"];
  const PER_CHANNEL = 1500;
  const subs = await Promise.all(CHANNELS.map((c) => TestSubscriber.connect(worker.url, c)));
  let relay = relayProcess();
  const killed: number[] = [];
  try {
    await relay.waitForLog("leading");
    const writing = Promise.all(CHANNELS.map((c) => writeNumbered(db, c, 1, PER_CHANNEL, 5)));
    for (const atLeast of [300, 900]) {
      // Kill while events are flowing: some batches acknowledged, one possibly in flight.
      await subs[0]!.waitForEvents(atLeast, 60_000);
      relay.kill("SIGKILL");
      await relay.exited;
      killed.push(subs[0]!.events.length);
      relay = relayProcess();
    }
    await writing;
    for (const [i, sub] of subs.entries()) expectExactlyOnceInOrder(await sub.waitForEvents(PER_CHANNEL, 60_000), CHANNELS[i]!, PER_CHANNEL);
    // The kills happened mid-burst, not after it.
    expect(killed.every((n) => n < PER_CHANNEL)).toBe(true);
    // Every event the Worker was sent twice was dropped as a duplicate, never shown twice.
    const sent = proxy.ingests.flat();
    expect(new Set(sent).size).toBe(CHANNELS.length * PER_CHANNEL);
  } finally {
    relay.kill("SIGKILL");
    for (const s of subs) s.close();
  }
});
