/** Helpers for tests inside workerd: signed ingest requests and sockets that record frames. */
import { env, exports } from "cloudflare:workers";
import type { ChannelEvent, IngestEvent, ServerFrame } from "../../protocol/index.ts";
import { ingestBody, SIGNATURE_HEADER, signBody } from "../../protocol/index.ts";
import { mintToken } from "../../token/index.ts";

export const SECRET = env.INGEST_SECRET!;
export const JWT_SECRET = env.JWT_SECRET!;

/** A token for `channels`, as the app's backend would mint it. */
export function tokenFor(channels: string[], sub = `user-${++counter}`, extra: Partial<Parameters<typeof mintToken>[0]> = {}): Promise<string> {
  return mintToken({ secret: JWT_SECRET, sub, channels, ...extra });
}

/** Options of {@link Socket.open}: by default a fresh user's token for the channel. */
export interface OpenOptions {
  /** The token to send; null sends none. Default: a new user's token for this channel. */
  token?: string | null;
  headers?: Record<string, string>;
}

let counter = 0;
/** An ingest event with a unique id; `data` is a value, carried as its JSON text. */
export function event(channel: string, data: unknown = { n: ++counter }, over: Partial<IngestEvent> = {}): IngestEvent {
  return { id: `test-${++counter}`, channel, event: "test", data: JSON.stringify(data), ts: Date.now(), ...over };
}

/** An event as a plain JSON value (its data parsed), for hand-built bodies: `JSON.stringify({ events: [wire(e)] })`. */
export function wire(e: IngestEvent): Omit<IngestEvent, "data"> & { data: unknown } {
  return { ...e, data: JSON.parse(e.data) };
}

/** POSTs a raw body to /ingest, signed with `secret` at `t` unless a header is given. */
export async function postIngest(body: string, opts: { secret?: string; t?: number; signature?: string | null; streamed?: boolean } = {}): Promise<Response> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  const signature = opts.signature === undefined ? await signBody(opts.secret ?? SECRET, body, opts.t) : opts.signature;
  if (signature !== null) headers[SIGNATURE_HEADER] = signature;
  // A string body goes with its Content-Length, as the relay sends it; a stream goes without one
  // (chunked), and the Worker counts its bytes as they arrive.
  return exports.default.fetch("http://edge/ingest", { method: "POST", headers, body: opts.streamed ? chunked(body) : body });
}

/** `body` as a stream of 16 KB chunks (cut anywhere, mid-character included), of no declared length. */
function chunked(body: string): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(body);
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < bytes.byteLength; i += 16_384) controller.enqueue(bytes.slice(i, i + 16_384));
      controller.close();
    },
  });
}

/** A change event as `realtime.watch` writes it (retained unless told otherwise). */
export function change(
  channel: string,
  op: "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE",
  row: Record<string, unknown> | null,
  options: { old?: Record<string, unknown> | null; retain?: boolean; table?: string } = {},
): IngestEvent {
  const key = row && "id" in row ? { id: row.id } : options.old && "id" in options.old ? { id: options.old.id } : {};
  const data = {
    op,
    schema: "public",
    table: options.table ?? "items",
    key,
    new: op === "DELETE" || op === "TRUNCATE" ? null : row,
    old: op === "DELETE" ? row : (options.old ?? null),
  };
  return event(channel, data, { event: op.toLowerCase(), ...(options.retain === false ? {} : { retain: true }) });
}

/** POSTs events, signed; returns status and JSON answer. */
// biome-ignore lint/suspicious/noExplicitAny: tests read whichever members the answer has
export async function ingest(events: IngestEvent[]): Promise<{ status: number; body: any }> {
  const res = await postIngest(ingestBody(events));
  return { status: res.status, body: await res.json() };
}

/** What a test waits on: `until(check)` resolves once `check` holds, checked again at each `changed()`. */
class Waitable {
  private waiters: (() => void)[] = [];

  /** Waits until `check` holds (re-checked on every message). */
  until<T>(check: () => T | undefined | null | false): Promise<T> {
    return new Promise((resolve) => {
      const test = () => {
        const v = check();
        if (v === undefined || v === null || v === false) return false;
        resolve(v);
        return true;
      };
      if (test()) return;
      const waiter = () => {
        if (test()) this.waiters = this.waiters.filter((w) => w !== waiter);
      };
      this.waiters.push(waiter);
    });
  }

  protected changed(): void {
    for (const w of [...this.waiters]) w();
  }
}

/** A WebSocket accepted from the Worker, recording frames; `next()` awaits the next one. */
export class Socket extends Waitable {
  readonly frames: ServerFrame[] = [];
  /** Every text message as received, JSON or not (`pong`). */
  readonly raw: string[] = [];
  closed: { code: number; reason: string } | null = null;

  constructor(readonly ws: WebSocket) {
    super();
    ws.accept();
    ws.addEventListener("message", (m) => {
      const text = m.data as string;
      this.raw.push(text);
      if (text.startsWith("{")) this.frames.push(JSON.parse(text));
      this.changed();
    });
    ws.addEventListener("close", (c) => {
      this.closed = { code: c.code, reason: c.reason };
      this.changed();
    });
  }

  /** Opens a channel's WebSocket through the Worker's router. */
  static async open(channel: string, query = "", options: OpenOptions = {}): Promise<Socket> {
    const res = await upgrade(channel, query, options);
    if (res.status !== 101 || !res.webSocket) throw new Error(`upgrade failed: ${res.status} ${await res.text()}`);
    return new Socket(res.webSocket);
  }

  get events(): ChannelEvent[] {
    return this.frames.flatMap((f) => (f.type === "events" ? f.events : []));
  }

  frameCount(n: number): Promise<ServerFrame[]> {
    return this.until(() => this.frames.length >= n && this.frames);
  }

  eventCount(n: number): Promise<ChannelEvent[]> {
    return this.until(() => this.events.length >= n && this.events);
  }
}

/** Sends an upgrade request through the Worker's router; returns the raw response. */
export async function upgrade(channel: string, query = "", options: OpenOptions = {}): Promise<Response> {
  const token = options.token === undefined ? await tokenFor([channel]) : options.token;
  const params = new URLSearchParams(query.replace(/^\?/, ""));
  if (token !== null) params.set("token", token);
  const qs = params.toString();
  return exports.default.fetch(`http://edge/parties/main/${channel}${qs ? `?${qs}` : ""}`, {
    headers: { Upgrade: "websocket", ...options.headers },
  });
}

/** One Server-Sent Events message as an EventSource would report it. */
export interface StreamMessage {
  id: string | null;
  data: string;
}

/** A channel's event stream (Server-Sent Events) read through the Worker, parsed as EventSource parses it. */
export class EventStreamReader extends Waitable {
  readonly messages: StreamMessage[] = [];
  /** Comment lines seen (keep-alives). */
  comments = 0;
  ended = false;

  constructor(readonly response: Response) {
    super();
    void this.read(response.body!.getReader());
  }

  /** Asks for a channel's event stream; returns the reader (or throws with the refusal's status and body). */
  static async open(channel: string, query = "", options: OpenOptions & { lastEventId?: string } = {}): Promise<EventStreamReader> {
    const res = await requestStream(channel, query, options);
    if (res.status !== 200) throw new Error(`stream refused: ${res.status} ${await res.text()}`);
    return new EventStreamReader(res);
  }

  /** The frames of the messages (their data parsed). */
  get frames(): ServerFrame[] {
    return this.messages.map((m) => JSON.parse(m.data) as ServerFrame);
  }

  get events(): ChannelEvent[] {
    return this.frames.flatMap((f) => (f.type === "events" ? f.events : []));
  }

  /** The id an EventSource would send back as Last-Event-ID: the last id seen. */
  get lastEventId(): string | null {
    return this.messages.findLast((m) => m.id !== null)?.id ?? null;
  }

  eventCount(n: number): Promise<ChannelEvent[]> {
    return this.until(() => this.events.length >= n && this.events);
  }

  async close(): Promise<void> {
    await this.response.body?.cancel().catch(() => {});
  }

  private async read(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end = buffer.indexOf("\n\n");
        while (end >= 0) {
          this.parse(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          end = buffer.indexOf("\n\n");
        }
      }
    } catch {
      // cancelled
    }
    this.ended = true;
    this.changed();
  }

  /** One message block, by the Server-Sent Events rules (data lines joined with "\n"). */
  private parse(block: string): void {
    let id: string | null = null;
    const data: string[] = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) {
        this.comments++;
        continue;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    if (data.length > 0) this.messages.push({ id, data: data.join("\n") });
    this.changed();
  }
}

/** Asks the Worker for a channel's event stream; returns the raw response. */
export async function requestStream(channel: string, query = "", options: OpenOptions & { lastEventId?: string } = {}): Promise<Response> {
  const token = options.token === undefined ? await tokenFor([channel]) : options.token;
  const params = new URLSearchParams(query.replace(/^\?/, ""));
  if (token !== null) params.set("token", token);
  const qs = params.toString();
  return exports.default.fetch(`http://edge/parties/main/${channel}${qs ? `?${qs}` : ""}`, {
    headers: { Accept: "text/event-stream", ...(options.lastEventId ? { "Last-Event-ID": options.lastEventId } : {}), ...options.headers },
  });
}

/** GETs a channel's catch-up (`/channels/<channel>/events`) with a token for it; returns status and JSON. */
// biome-ignore lint/suspicious/noExplicitAny: tests read whichever members the answer has
export async function catchUp(channel: string, query = "", options: OpenOptions = {}): Promise<{ status: number; body: any }> {
  const token = options.token === undefined ? await tokenFor([channel]) : options.token;
  const params = new URLSearchParams(query.replace(/^\?/, ""));
  const qs = params.toString();
  const res = await exports.default.fetch(`http://edge/channels/${channel}/events${qs ? `?${qs}` : ""}`, {
    headers: { ...(token !== null ? { Authorization: `Bearer ${token}` } : {}), ...options.headers },
  });
  return { status: res.status, body: await res.json() };
}
