/**
 * SIGKILL the relay process in the middle of a sustained write burst, start it again: every event
 * arrives, none twice, in order per channel. The batch that was in flight when the relay died is
 * sent again by its successor, and the channels drop the copies.
 */
import { afterAll, beforeAll, it } from "vitest";
import { testDatabase, type TestDatabase } from "../support/db.ts";
import { startFaultProxy, type FaultProxy } from "../support/fault-proxy.ts";
import { startTestWorker, type TestWorker } from "../support/worker.ts";
import { killTwiceDuringBurst } from "./ledger.ts";

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

it("loses and duplicates nothing when the relay is SIGKILLed twice during a burst on 3 channels", async () => {
  await killTwiceDuringBurst({ db, workerUrl: worker.url, proxy, channels: ["crash-a", "crash-b", "crash-c"], perChannel: 1500, ready: "leading" });
});
