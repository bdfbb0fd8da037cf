/** A raw WebSocket subscriber for tests: records every frame, and waits on conditions over them. */
import WebSocket from "ws";
import type { ChannelEvent, ServerFrame } from "../../protocol/index.ts";

/** Resolves when `check()` returns something other than undefined/null/false, re-checked on `subscribe`'s signal. */
export function waitUntil<T>(
  check: () => T | undefined | null | false,
  subscribe: (notify: () => void) => () => void,
  describe: () => string,
  timeoutMs = 20_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const first = check();
    if (first !== undefined && first !== null && first !== false) return resolve(first);
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${describe()}`));
    }, timeoutMs);
    const unsubscribe = subscribe(() => {
      let value: T | undefined | null | false;
      try {
        value = check();
      } catch (err) {
        clearTimeout(timer);
        unsubscribe();
        return reject(err);
      }
      if (value === undefined || value === null || value === false) return;
      clearTimeout(timer);
      unsubscribe();
      resolve(value);
    });
  });
}

/** One WebSocket on a channel and everything it received. */
export class TestSubscriber {
  readonly frames: ServerFrame[] = [];
  /** Every message's text, as received (frames carry event data as the producer's JSON text). */
  readonly raw: string[] = [];
  readonly events: ChannelEvent[] = [];
  closed: { code: number; reason: string } | null = null;
  private readonly listeners = new Set<() => void>();

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      const text = data.toString();
      this.raw.push(text);
      const frame = JSON.parse(text) as ServerFrame;
      this.frames.push(frame);
      if (frame.type === "events") this.events.push(...frame.events);
      this.notify();
    });
    ws.on("close", (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.notify();
    });
    ws.on("error", () => this.notify());
  }

  /** Opens `<workerUrl>/parties/main/<channel>?<query>` and waits for the welcome frame. */
  static async connect(workerUrl: string, channel: string, query: Record<string, string> = {}): Promise<TestSubscriber> {
    const url = new URL(`/parties/main/${channel}`, workerUrl.replace(/^http/, "ws"));
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const sub = new TestSubscriber(new WebSocket(url));
    await sub.until(() => sub.frames.some((f) => f.type === "welcome") || undefined, "welcome");
    return sub;
  }

  get welcome(): Extract<ServerFrame, { type: "welcome" }> {
    return this.frames.find((f): f is Extract<ServerFrame, { type: "welcome" }> => f.type === "welcome")!;
  }

  /** Waits until `check` holds over what was received. */
  until<T>(check: () => T | undefined | null | false, what: string, timeoutMs?: number): Promise<T> {
    return waitUntil(
      check,
      (notify) => {
        this.listeners.add(notify);
        return () => this.listeners.delete(notify);
      },
      () => `${what} (received ${this.frames.length} frames, ${this.events.length} events${this.closed ? `, closed ${this.closed.code}` : ""})`,
      timeoutMs,
    );
  }

  /** Waits until at least `n` events arrived; returns them. */
  eventCount(n: number, timeoutMs?: number): Promise<ChannelEvent[]> {
    return this.until(() => (this.events.length >= n ? this.events : undefined), `${n} events`, timeoutMs);
  }

  close(): void {
    this.ws.close();
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }
}

/**
 * Attempts a WebSocket upgrade and resolves with the HTTP status: 101 when it opened (the socket
 * is closed again), else the refusal's status and JSON body.
 */
export function upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws"), { headers });
    ws.on("open", () => {
      ws.close();
      resolve({ status: 101, body: null });
    });
    ws.on("unexpected-response", (_req, res) => {
      let text = "";
      res.on("data", (d: Buffer) => (text += d));
      res.on("end", () => {
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // not JSON: keep the text
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    ws.on("error", (err) => {
      if (!/Unexpected server response/.test(err.message)) reject(err);
    });
  });
}
