/**
 * SIGKILL the relay process in the middle of a sustained write burst, start it again: every event
 * arrives, none twice, in order per channel. The batch that was in flight when the relay died is
 * sent again by its successor, and the channels drop the copies.
 */
import { it } from "vitest";
import { useStack } from "../support/stack.ts";
import { killTwiceDuringBurst } from "./ledger.ts";

const stack = useStack({ database: "crash", worker: {}, ingestProxy: true });

it("loses and duplicates nothing when the relay is SIGKILLed twice during a burst on 3 channels", async () => {
  await killTwiceDuringBurst({
    db: stack.db,
    workerUrl: stack.worker.url,
    proxy: stack.ingestProxy,
    channels: ["crash-a", "crash-b", "crash-c"],
    perChannel: 1500,
    ready: "leading",
  });
});
