/**
 * The client's reconnect jitter (`reconnectJitterMs`), without a network: subscribe() over
 * partysocket over a fake WebSocket class, on fake timers, with Math.random pinned. What is
 * checked is when partysocket constructs the next WebSocket, that is, when it connects.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { type SubscribeOptions, subscribe } from "../../client/index.ts";

/** A WebSocket that connects only when told to: `open()`, `drop()` (the server or network closes it), `fail()`. */
class FakeSocket extends EventTarget {
  static all: FakeSocket[] = [];
  readyState = 0;
  binaryType = "blob";
  constructor(readonly url: string) {
    super();
    FakeSocket.all.push(this);
  }
  open(): void {
    this.readyState = 1;
    this.dispatchEvent(new Event("open"));
    this.dispatchEvent(Object.assign(new Event("message"), { data: '{"type":"welcome","channel":"c","epoch":"e1","seq":7,"member":"m"}' }));
  }
  drop(code = 1006): void {
    this.readyState = 3;
    this.dispatchEvent(Object.assign(new Event("close"), { code, reason: "gone" }));
  }
  fail(): void {
    this.readyState = 3;
    this.dispatchEvent(Object.assign(new Event("close"), { code: 1006, reason: "refused" }));
  }
  send(): void {}
  close(): void {
    this.readyState = 3;
  }
}

/** partysocket's delays for these tests: 100 ms before a reconnect, growing 2x up to 400 ms. */
const BACKOFF = { minReconnectionDelay: 100, maxReconnectionDelay: 400, reconnectionDelayGrowFactor: 2, minUptime: 50 };

function start(options: Partial<SubscribeOptions> = {}) {
  const sub = subscribe({ host: "127.0.0.1:1", channel: "c", WebSocket: FakeSocket, heartbeatMs: 0, socket: BACKOFF, ...options });
  return { sub, sockets: FakeSocket.all };
}

/** Lets partysocket's timers and promise chains run for `ms` of fake time. */
const pass = (ms: number) => vi.advanceTimersByTimeAsync(ms);

/** An open connection whose uptime partysocket accepted (its retry count back to 0), then dropped by the server. */
async function openThenDrop(sockets: FakeSocket[]): Promise<void> {
  await pass(0);
  sockets.at(-1)!.open();
  await pass(BACKOFF.minUptime);
  sockets.at(-1)!.drop();
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.useFakeTimers();
});

afterEach(() => {
  vi.restoreAllMocks();
  vi.useRealTimers();
});

describe("reconnectJitterMs", () => {
  it("delays the first reconnect after a server close by random x window, on top of partysocket's delay", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.25);
    const { sub, sockets } = start({ reconnectJitterMs: 2000 });
    await openThenDrop(sockets);
    expect(sub.status).toBe("connecting");
    await pass(BACKOFF.minReconnectionDelay + 500 - 1);
    expect(sockets).toHaveLength(1);
    await pass(1);
    expect(sockets).toHaveLength(2);
    // It resumes from what it had: since and epoch of the welcome.
    expect(new URL(sockets[1]!.url).searchParams.get("since")).toBe("7");
    sub.close();
  });

  it("draws each client's delay from the whole window [0, window)", async () => {
    // (a timer of 0 ms fires after 1 ms, as in Node)
    for (const [random, earliest, latest] of [
      [0, 0, 1],
      [0.999, 1997, 1998],
    ] as const) {
      FakeSocket.all = [];
      vi.spyOn(Math, "random").mockReturnValue(random);
      const { sub, sockets } = start({ reconnectJitterMs: 2000 });
      await openThenDrop(sockets);
      await pass(BACKOFF.minReconnectionDelay + earliest);
      expect(sockets).toHaveLength(1);
      await pass(latest - earliest);
      expect(sockets).toHaveLength(2);
      sub.close();
    }
  });

  it("delays only the first attempt: later ones use partysocket's backoff alone", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.5);
    const { sub, sockets } = start({ reconnectJitterMs: 10_000 });
    await openThenDrop(sockets);
    await pass(BACKOFF.minReconnectionDelay + 5000);
    expect(sockets).toHaveLength(2);
    // The jittered attempt fails (the server is not back yet): the next one waits 200 ms (the
    // second retry's backoff), not another share of 10 s.
    sockets[1]!.fail();
    await pass(199);
    expect(sockets).toHaveLength(2);
    await pass(1);
    expect(sockets).toHaveLength(3);
    // Opened and dropped again: a new server close, so a new jitter.
    sockets[2]!.open();
    await pass(BACKOFF.minUptime);
    sockets[2]!.drop();
    await pass(BACKOFF.minReconnectionDelay + 5000 - 1);
    expect(sockets).toHaveLength(3);
    await pass(1);
    expect(sockets).toHaveLength(4);
    sub.close();
  });

  it("is off at 0: the reconnect goes after partysocket's delay alone", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.9);
    const { sub, sockets } = start({ reconnectJitterMs: 0 });
    await openThenDrop(sockets);
    await pass(BACKOFF.minReconnectionDelay);
    expect(sockets).toHaveLength(2);
    sub.close();
  });

  it("defaults to a 5 s window", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.5);
    const { sub, sockets } = start();
    await openThenDrop(sockets);
    await pass(BACKOFF.minReconnectionDelay + 2500 - 1);
    expect(sockets).toHaveLength(1);
    await pass(1);
    expect(sockets).toHaveLength(2);
    sub.close();
  });

  it("does not delay a connection that never opened (the first connect failing)", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.9);
    const { sub, sockets } = start({ reconnectJitterMs: 10_000 });
    await pass(0);
    sockets[0]!.fail();
    await pass(BACKOFF.minReconnectionDelay);
    expect(sockets).toHaveLength(2);
    sub.close();
  });

  it("does not delay a reconnect the app asks for, even during a jitter wait", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.9);
    const { sub, sockets } = start({ reconnectJitterMs: 10_000 });
    await pass(0);
    sockets[0]!.open();
    sub.socket.reconnect();
    await pass(0);
    expect(sockets).toHaveLength(2);
    // Dropped by the server: the wait starts; the app's reconnect ends it at once.
    sockets[1]!.open();
    await pass(BACKOFF.minUptime);
    sockets[1]!.drop();
    await pass(BACKOFF.minReconnectionDelay + 1000);
    expect(sockets).toHaveLength(2);
    sub.socket.reconnect();
    await pass(0);
    expect(sockets).toHaveLength(3);
    sub.close();
  });

  it("fetches the token after the wait, not before it", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.5);
    const token = vi.fn(() => "t");
    const { sub, sockets } = start({ reconnectJitterMs: 2000, token });
    await openThenDrop(sockets);
    expect(token).toHaveBeenCalledTimes(1);
    await pass(BACKOFF.minReconnectionDelay + 999);
    expect(token).toHaveBeenCalledTimes(1);
    await pass(1);
    expect(token).toHaveBeenCalledTimes(2);
    sub.close();
  });

  it("stays closed when the app closes during the wait, with no timer left behind", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.9);
    const token = vi.fn(() => "t");
    const { sub, sockets } = start({ reconnectJitterMs: 10_000, token });
    await openThenDrop(sockets);
    await pass(BACKOFF.minReconnectionDelay + 1000); // partysocket's delay is over: in the jitter wait
    sub.close();
    expect(vi.getTimerCount()).toBe(0);
    await pass(60_000);
    expect(sockets).toHaveLength(1);
    expect(token).toHaveBeenCalledTimes(1);
    expect(sub.status).toBe("closed");
  });
});
