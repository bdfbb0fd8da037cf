/**
 * The channel over Server-Sent Events, for networks that cannot hold a WebSocket (a proxy that
 * refuses upgrades): the same frames, one per message, read with the platform's EventSource.
 * One-way: presence and broadcast need the WebSocket.
 *
 * It stands in for the WebSocket inside subscribe() with the few members that uses (readyState,
 * open/message/close events, reconnect, close). Every (re)connect asks `url()` afresh, so a
 * reconnect resumes from the client's own position (`since`, `epoch`) with a fresh token; the
 * EventSource's own reconnection is not used (it would keep the first URL and token).
 */
/** What {@link EventStreamTransport} needs. */
export interface EventStreamOptions {
  /** The stream's URL for this (re)connect. */
  url: () => Promise<string>;
  /** The EventSource constructor (the global one in browsers; a package such as `eventsource` in Node). */
  EventSource: EventSourceConstructor;
  /** Wait before the first reconnect, ms; doubled on each failure up to `maxDelayMs`, with full jitter. */
  minDelayMs: number;
  maxDelayMs: number;
}

/** The part of EventSource's constructor this uses. */
export type EventSourceConstructor = new (url: string) => EventSourceLike;

/** The part of an EventSource this uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
  close(): void;
}

/** The URL of a channel over HTTP (event stream): partysocket's rule, http for local hosts, else https. */
export function channelHttpUrl(host: string, channel: string, query: Record<string, string | null>): string {
  const bare = host.replace(/^(http|https|ws|wss):\/\//, "").replace(/\/$/, "");
  const local = /^(localhost:|127\.0\.0\.1:|192\.168\.|10\.|\[::ffff:7f00:1\]:)/.test(bare) || /^172\.(1[6-9]|2\d|3[01])\./.test(bare);
  const params = new URLSearchParams(Object.entries(query).filter((e): e is [string, string] => e[1] !== null));
  return `${local ? "http" : "https"}://${bare}/parties/main/${channel}?${params}`;
}

export class EventStreamTransport extends EventTarget {
  /** As a WebSocket's: 0 connecting, 1 open, 3 closed. */
  readyState = 0;
  private source: EventSourceLike | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private failures = 0;
  private stopped = false;

  constructor(private readonly options: EventStreamOptions) {
    super();
    void this.connect();
  }

  /** Drops the stream and opens a new one (from the client's position as `url()` gives it). */
  reconnect(): void {
    this.stopped = false;
    this.drop();
    void this.connect();
  }

  /** Closes for good. */
  close(): void {
    this.stopped = true;
    this.drop();
    this.readyState = 3;
  }

  /** Nothing goes up a stream: presence and broadcast are WebSocket-only. */
  send(_data: string): void {}

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.readyState = 0;
    const url = await this.options.url();
    if (this.stopped) return;
    const source = new this.options.EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.failures = 0;
      this.readyState = 1;
      this.dispatchEvent(new Event("open"));
    };
    source.onmessage = (m) => this.dispatchEvent(new MessageEvent("message", { data: m.data }));
    source.onerror = () => {
      // The stream ended or could not start: reconnect ourselves, from the client's position.
      if (this.source !== source) return;
      this.drop();
      this.dispatchEvent(new Event("close"));
      if (this.stopped) return;
      const ceiling = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** this.failures++);
      this.timer = setTimeout(() => void this.connect(), Math.random() * ceiling);
    };
  }

  private drop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const source = this.source;
    this.source = null;
    source?.close();
    if (this.readyState !== 3) this.readyState = 3;
  }
}
