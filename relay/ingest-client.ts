/**
 * Signs and POSTs batches to the Worker's `/ingest`. A transient failure (network, 5xx, 408, 429)
 * retries the same batch with backoff for as long as it takes: the events wait in Postgres. A
 * permanent refusal of the batch's content (400, 413) never stops delivery: the batch is split
 * until the refused event stands alone, the rest is delivered, and the event is replaced by a
 * marker (too large) or skipped with an error naming its source id (invalid). A refusal that says
 * the relay itself is misconfigured (401: the secrets differ; 403, 404, 405: not the Worker's
 * ingest) ends delivery after a few attempts with {@link IngestConfigError}, so a supervisor sees
 * the relay fail instead of an "active" process that delivers nothing.
 */

import http from "node:http";
import https from "node:https";
import type { IngestEvent, IngestResult } from "../protocol/index.ts";
import { ingestBody, markerJson, SIGNATURE_HEADER, signBody } from "../protocol/index.ts";
import { backoffDelay, sleep } from "./backoff.ts";

/** One kept-alive connection pool per process: batches go one after another to one Worker. */
const httpAgent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 4 });

/** One event ready to send: `data` is JSON text, spliced into the body without re-parsing. */
export type OutgoingEvent = IngestEvent;

/** A POST failed. */
export class IngestError extends Error {
  override readonly name = "IngestError";
  constructor(
    message: string,
    readonly code: string,
    readonly status: number | null,
    options?: ErrorOptions & { detail?: string },
  ) {
    super(message, options);
    this.detail = options?.detail ?? "";
  }

  /** The Worker's own message (`events[3]: channel ...`), when it sent one. */
  readonly detail: string;

  /**
   * What the failure says about sending again: the same batch later (`transient`), a part of it
   * (`content`: an event refused, named by the Worker as `events[i]`, or a batch too large), or
   * nothing until the configuration changes (`config`: the secret, the URL, or a body the Worker
   * cannot read at all, which is no single event's fault).
   */
  get kind(): "transient" | "content" | "config" {
    const s = this.status;
    if (s === 413 || (s === 400 && this.detail.startsWith("events["))) return "content";
    if (s === 400 || s === 401 || s === 403 || s === 404 || s === 405) return "config";
    return "transient";
  }
}

/** The Worker keeps refusing this relay as such (wrong secret, wrong URL): delivery cannot go on until it is fixed. */
export class IngestConfigError extends Error {
  override readonly name = "IngestConfigError";
  readonly code = "ingest_config";
}

/** The relay was asked to stop while a batch was still unacknowledged. */
export class StoppedError extends Error {
  override readonly name = "StoppedError";
  readonly code = "stopped";
}

/** An event the Worker refused on its own (invalid), skipped so that the others go on. */
export interface RefusedEvent {
  id: string;
  channel: string;
  event: string;
  code: string;
  message: string;
}

/** What delivering a batch came to. */
export interface Delivery extends IngestResult {
  /** Events sent as a marker: by the relay (too large) and by the channels. */
  markers: number;
  /** Events the Worker refused, each alone, and that were skipped. */
  refused: RefusedEvent[];
}

/** Options of {@link IngestClient}. */
export interface IngestClientOptions {
  workerUrl: string;
  secret: string;
  requestTimeoutMs: number;
  retryBaseMs: number;
  retryMaxMs: number;
  maxEventBytes: number;
  /** Consecutive refusals as misconfigured (401, 403, 404, 405) before {@link IngestConfigError}. Default 5. */
  maxConfigFailures?: number;
  /** Called before each retry sleep. */
  onRetry?: (info: { attempt: number; delayMs: number; error: IngestError }) => void;
}

/**
 * `events` as they go on the wire: one whose data is larger than `maxEventBytes` is replaced by
 * an `event_too_large` marker naming what changed (its key copied as text), so it still arrives,
 * in order, and a subscriber can fetch the row.
 */
export function withinLimit(events: readonly OutgoingEvent[], maxEventBytes: number): { events: OutgoingEvent[]; markers: number } {
  let markers = 0;
  const out = events.map((e) => {
    // A UTF-16 length within a third of the limit cannot pass it in UTF-8: no count needed.
    if (e.data.length * 3 <= maxEventBytes) return e;
    const bytes = Buffer.byteLength(e.data);
    if (bytes <= maxEventBytes) return e;
    markers++;
    return { ...e, data: markerJson(e.data, "event_too_large", bytes) };
  });
  return { events: out, markers };
}

/** Sends batches to one Worker. */
export class IngestClient {
  private readonly url: string;

  constructor(private readonly options: IngestClientOptions) {
    // Relative to the Worker's base URL, which may have a path (routes mounted under a prefix).
    this.url = new URL("ingest", options.workerUrl.endsWith("/") ? options.workerUrl : `${options.workerUrl}/`).toString();
  }

  /** One attempt: resolves with the Worker's answer on 2xx, throws {@link IngestError} otherwise. */
  async post(events: readonly OutgoingEvent[]): Promise<IngestResult> {
    const body = ingestBody(events);
    const signature = await signBody(this.options.secret, body);
    let res: { status: number; text: string };
    try {
      res = await this.request(body, signature);
    } catch (err) {
      throw new IngestError(`POST ${this.url} failed: ${(err as Error).message}`, "network", null, { cause: err });
    }
    const ok = res.status >= 200 && res.status < 300;
    if (ok) {
      try {
        return JSON.parse(res.text) as IngestResult;
      } catch (err) {
        // A 2xx that is not the Worker's answer (a captive proxy, a wrong URL): not acknowledged.
        throw new IngestError(`Worker answered ${res.status} without its JSON result (is WORKER_URL the Worker?)`, "bad_answer", res.status, { cause: err });
      }
    }
    let code = "http_error";
    let message = res.text.slice(0, 200);
    try {
      const parsed = JSON.parse(res.text) as { error?: { code?: string; message?: string } };
      code = parsed.error?.code ?? code;
      message = parsed.error?.message ?? message;
    } catch {
      // not our JSON error body (a proxy's page): keep the start of the text
    }
    throw new IngestError(`Worker answered ${res.status} ${code}: ${message}${hint(res.status, code)}`, code, res.status, { detail: message });
  }

  /**
   * One HTTP request on a kept-alive connection. node:http rather than fetch (undici): it costs
   * less per request, which is most of a small batch's latency (docs/benchmarks.md has the figures).
   */
  private request(body: string, signature: string): Promise<{ status: number; text: string }> {
    const url = new URL(this.url);
    const transport = url.protocol === "https:" ? https : http;
    return new Promise((resolve, reject) => {
      const req = transport.request(
        url,
        {
          method: "POST",
          agent: url.protocol === "https:" ? httpsAgent : httpAgent,
          headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), [SIGNATURE_HEADER]: signature },
          timeout: this.options.requestTimeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.options.requestTimeoutMs} ms`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  /**
   * Delivers `events` (over-large data replaced by markers first): posts until the Worker answers
   * 2xx, backing off between attempts of a transient failure; splits a batch refused for its
   * content until the refused event stands alone (see the module comment). Throws
   * {@link StoppedError} if `signal` aborts first, {@link IngestConfigError} when the Worker keeps
   * refusing the relay itself.
   */
  async deliver(events: readonly OutgoingEvent[], signal: AbortSignal): Promise<Delivery> {
    const prepared = withinLimit(events, this.options.maxEventBytes);
    const delivery: Delivery = { accepted: 0, duplicates: 0, markers: prepared.markers, refused: [] };
    await this.deliverPart(prepared.events, signal, delivery);
    return delivery;
  }

  private async deliverPart(events: readonly OutgoingEvent[], signal: AbortSignal, into: Delivery): Promise<void> {
    let configFailures = 0;
    let marked = false;
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) throw new StoppedError("stopped before the batch was acknowledged");
      let error: IngestError;
      try {
        const result = await this.post(events);
        into.accepted += result.accepted;
        into.duplicates += result.duplicates;
        into.markers += result.markers ?? 0;
        return;
      } catch (err) {
        if (!(err instanceof IngestError)) throw err;
        error = err;
      }
      if (error.kind === "content") {
        if (events.length > 1) {
          // In order: the first half is acknowledged before the second is sent.
          const half = Math.ceil(events.length / 2);
          await this.deliverPart(events.slice(0, half), signal, into);
          await this.deliverPart(events.slice(half), signal, into);
          return;
        }
        const e = events[0]!;
        if (error.status === 413 && !marked) {
          // Alone and still too large for the Worker (its MAX_INGEST_BYTES is below --max-event-bytes).
          marked = true;
          into.markers++;
          events = [{ ...e, data: markerJson(e.data, "event_too_large") }];
          continue;
        }
        into.refused.push({ id: e.id, channel: e.channel, event: e.event, code: error.code, message: error.message });
        return;
      }
      if (error.kind === "config" && ++configFailures >= (this.options.maxConfigFailures ?? 5)) {
        throw new IngestConfigError(
          `${error.message}; the Worker refused ${configFailures} attempts in a row, so the relay stops rather than run without delivering`,
          { cause: error },
        );
      }
      const delayMs = backoffDelay(attempt, this.options.retryBaseMs, this.options.retryMaxMs);
      this.options.onRetry?.({ attempt, delayMs, error });
      await sleep(delayMs, signal);
    }
  }
}

function hint(status: number, code: string): string {
  if (code.startsWith("signature_mismatch")) return " (set the relay's INGEST_SECRET to the Worker's)";
  if (code === "signature_expired") return " (the relay's clock is off by more than 5 minutes: check NTP)";
  if (status === 413) return " (lower --batch-bytes / --batch-size, or raise the Worker's MAX_INGEST_BYTES)";
  if (status === 404) return " (is WORKER_URL the Worker's base URL?)";
  return "";
}
