/** `POST /ingest`: signed batches from the relay, verified, validated, routed per channel. */
import type { Context } from "hono";
import type { ErrorCode, IngestEvent, IngestResult } from "../protocol/index.ts";
import { parseIngestBody, SIGNATURE_HEADER, SIGNATURE_TOLERANCE_SECONDS, verifySignature } from "../protocol/index.ts";
import { resolveWorkerConfig } from "./config.ts";
import type { Env } from "./env.ts";
import { jsonError } from "./errors.ts";
import { log } from "./log.ts";

const SIGNATURE_ERRORS = {
  missing: ["signature_missing", `the ${SIGNATURE_HEADER} header is missing`],
  malformed: ["signature_malformed", `the ${SIGNATURE_HEADER} header must be t=<unix seconds>,v1=<hex HMAC-SHA256>`],
  expired: ["signature_expired", `the signature timestamp is more than ${SIGNATURE_TOLERANCE_SECONDS} seconds from the Worker's clock`],
  mismatch: ["signature_mismatch", "the signature does not match: the relay's INGEST_SECRET differs from the Worker's"],
} as const satisfies Record<string, readonly [ErrorCode, string]>;

/** Handles one ingest request; answers 200 only once every channel has stored its events. */
export async function ingest(c: Context<{ Bindings: Env }>): Promise<Response> {
  const config = resolveWorkerConfig(c.env);
  if (config.ingestSecrets.length === 0) {
    return jsonError(c, 503, "not_configured", "INGEST_SECRET is not set on the Worker: run `wrangler secret put INGEST_SECRET`");
  }
  const raw = await readText(c.req.raw, config.maxIngestBytes);
  if (raw === null) {
    return jsonError(c, 413, "payload_too_large", `body is larger than MAX_INGEST_BYTES (${config.maxIngestBytes} bytes)`);
  }
  const verdict = await verifySignature(config.ingestSecrets, c.req.header(SIGNATURE_HEADER), raw, SIGNATURE_TOLERANCE_SECONDS);
  if (verdict !== "ok") {
    const [code, message] = SIGNATURE_ERRORS[verdict];
    return jsonError(c, 401, code, message);
  }
  const parsed = parseIngestBody(raw, config.maxBatchEvents);
  if (!parsed.ok) return jsonError(c, parsed.code === "payload_too_large" ? 413 : 400, parsed.code, parsed.message);

  // One RPC per channel, events in the order the relay sent them (its commit order).
  const byChannel = new Map<string, IngestEvent[]>();
  for (const e of parsed.value.events) {
    const list = byChannel.get(e.channel);
    if (list) list.push(e);
    else byChannel.set(e.channel, [e]);
  }
  const results = await Promise.allSettled(
    [...byChannel].map(([channel, events]) => c.env.CHANNEL.get(c.env.CHANNEL.idFromName(channel)).publish(channel, events)),
  );
  const total: IngestResult = { accepted: 0, duplicates: 0 };
  const failed: string[] = [];
  results.forEach((r, i) => {
    if (r.status === "fulfilled") {
      total.accepted += r.value.accepted;
      total.duplicates += r.value.duplicates;
      if (r.value.markers) total.markers = (total.markers ?? 0) + r.value.markers;
    } else {
      failed.push([...byChannel.keys()][i]!);
      log("error", "channel publish failed", { error: String(r.reason) });
    }
  });
  if (failed.length > 0) {
    // The relay retries the whole batch; channels that stored theirs drop the copies as duplicates.
    return jsonError(c, 503, "channel_unavailable", `could not store events for ${failed.length} channel(s); retry the batch`);
  }
  return c.json(total satisfies IngestResult);
}

/** Reads the body as text, or null once it passes `limit` bytes (without buffering the rest). */
async function readText(request: Request, limit: number): Promise<string | null> {
  const declared = request.headers.get("Content-Length");
  if (Number(declared ?? "0") > limit) return null;
  if (!request.body) return "";
  // A declared length within the limit bounds the body (HTTP framing reads no further), so the
  // runtime reads it in one call, much cheaper than the loop below (docs/benchmarks.md, "Figures
  // behind the code"). The relay always declares it.
  if (declared !== null) return request.text();
  // Chunked (no length): count the bytes as they arrive.
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      return null;
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(bytes);
}
