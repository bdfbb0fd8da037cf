/**
 * Ingest signatures: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
 * Web Crypto only, so the same code runs in Node (relay, tests) and in workerd (Worker).
 */

const encoder = new TextEncoder();
const keyCache = new Map<string, Promise<CryptoKey>>();

function hmacKey(secret: string): Promise<CryptoKey> {
  let key = keyCache.get(secret);
  if (!key) {
    key = crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    // A relay or Worker uses one or two secrets for its whole life; the cache stays tiny.
    keyCache.set(secret, key);
  }
  return key;
}

function toHex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(hex: string): Uint8Array<ArrayBuffer> | null {
  if (hex.length % 2 !== 0 || !/^[0-9a-f]*$/i.test(hex)) return null;
  const out = new Uint8Array(new ArrayBuffer(hex.length / 2));
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Signs `body` for `POST /ingest`; returns the value of the signature header. */
export async function signBody(secret: string, body: string, nowSeconds = Math.floor(Date.now() / 1000)): Promise<string> {
  const mac = await crypto.subtle.sign("HMAC", await hmacKey(secret), encoder.encode(`${nowSeconds}.${body}`));
  return `t=${nowSeconds},v1=${toHex(mac)}`;
}

/** A parsed signature header: its timestamp and every `v1` value it carries. */
export interface ParsedSignature {
  t: number;
  v1: string[];
}

/** Parses `t=…,v1=…[,v1=…]`; null when the header is not of that form. */
export function parseSignatureHeader(header: string): ParsedSignature | null {
  let t: number | null = null;
  const v1: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) return null;
    const name = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (name === "t") {
      if (!/^\d{1,12}$/.test(value)) return null;
      t = Number(value);
    } else if (name === "v1") {
      if (!/^[0-9a-f]{64}$/i.test(value)) return null;
      v1.push(value);
    }
    // Unknown schemes (v2=…) are ignored so a future relay can send two signatures at once.
  }
  if (t === null || v1.length === 0) return null;
  return { t, v1 };
}

/** Outcome of {@link verifySignature}. */
export type SignatureVerdict = "ok" | "missing" | "malformed" | "expired" | "mismatch";

/**
 * Verifies a signature header against the raw body with any of `secrets` (current first, then
 * previous, for rotation). Comparison is `crypto.subtle.verify`, which is constant-time.
 */
export async function verifySignature(
  secrets: readonly string[],
  header: string | null | undefined,
  body: string,
  toleranceSeconds: number,
  nowSeconds = Math.floor(Date.now() / 1000),
): Promise<SignatureVerdict> {
  if (!header) return "missing";
  const parsed = parseSignatureHeader(header);
  if (!parsed) return "malformed";
  if (Math.abs(nowSeconds - parsed.t) > toleranceSeconds) return "expired";
  const signed = encoder.encode(`${parsed.t}.${body}`);
  for (const secret of secrets) {
    const key = await hmacKey(secret);
    for (const candidate of parsed.v1) {
      const mac = fromHex(candidate);
      if (mac && (await crypto.subtle.verify("HMAC", key, mac, signed))) return "ok";
    }
  }
  return "mismatch";
}
