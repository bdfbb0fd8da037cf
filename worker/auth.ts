/**
 * Who may join a channel, decided in the Worker before the upgrade reaches the channel's Durable
 * Object: a refused request never wakes (or creates) an object.
 *
 * Browsers cannot set headers on a WebSocket, so the token travels in the `token` query parameter
 * (partysocket's `query` function renews it on each reconnect); other clients may send
 * `Authorization: Bearer <token>`. HS256 tokens are checked with JWT_SECRET, RS256/ES256 tokens
 * against the keys at JWT_JWKS_URL.
 */

import type { HonoJsonWebKey } from "hono/utils/jwt/jws";
import { decodeHeader, verify, verifyWithJwks } from "hono/utils/jwt/jwt";
import type { JWTPayload } from "hono/utils/jwt/types";
import { channelMatches, type ErrorCode } from "../protocol/index.ts";
import type { AuthConfig } from "./config.ts";

/** The upgrade is refused: 401 (no or bad token), 403 (not allowed here), 503 (JWKS unreachable). */
export class AuthError extends Error {
  override readonly name = "AuthError";
  constructor(
    readonly status: 401 | 403 | 503,
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** Who is connecting: the token's subject and claims, or anonymous on a public channel. */
export interface Identity {
  sub: string | null;
  claims: JWTPayload | null;
  /** The token lists this channel in its publish claim: the socket may send `broadcast` messages. */
  canPublish: boolean;
}

/** The patterns a claim lists (a string or an array of strings). */
function patternsOf(claims: JWTPayload, claim: string): string[] {
  const granted = claims[claim];
  return Array.isArray(granted) ? granted.filter((p): p is string => typeof p === "string") : typeof granted === "string" ? [granted] : [];
}

/** The token of an upgrade request: `?token=`, else `Authorization: Bearer`. */
export function tokenOf(request: Request): string | null {
  const fromQuery = new URL(request.url).searchParams.get("token");
  if (fromQuery) return fromQuery;
  const header = request.headers.get("Authorization");
  return header?.startsWith("Bearer ") ? header.slice(7).trim() || null : null;
}

/** Decides whether `request` may join `channel`; throws {@link AuthError} when not. */
export async function authorize(request: Request, channel: string, config: AuthConfig): Promise<Identity> {
  const origin = request.headers.get("Origin");
  // Only browsers send Origin; a server-side client without one is judged by its token alone.
  if (origin && config.allowedOrigins && !config.allowedOrigins.includes(origin)) {
    throw new AuthError(403, "origin_not_allowed", "this origin may not connect (ALLOWED_ORIGINS)");
  }
  const token = tokenOf(request);
  const isPublic = config.publicChannels.some((p) => channelMatches(p, channel, null));
  if (!token) {
    if (isPublic) return { sub: null, claims: null, canPublish: false };
    throw new AuthError(401, "token_required", "this channel needs a token: connect with ?token=<JWT>");
  }
  const claims = await verifyToken(token, config);
  if (claims.exp === undefined && !config.allowTokensWithoutExp) {
    // A token that never expires cannot be taken back: refused unless the operator chose otherwise.
    throw new AuthError(401, "token_invalid", "the token has no expiry (exp); mint tokens with one (mintToken sets it), or set ALLOW_TOKENS_WITHOUT_EXP");
  }
  const sub = typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : null;
  const canPublish = patternsOf(claims, config.publishClaim).some((p) => channelMatches(p, channel, claims));
  if (!isPublic && !patternsOf(claims, config.channelsClaim).some((p) => channelMatches(p, channel, claims))) {
    throw new AuthError(403, "channel_forbidden", `the token's "${config.channelsClaim}" claim does not include this channel`);
  }
  return { sub, claims, canPublish };
}

/** Hono's JWT error class names, mapped to our codes. Messages are ours: Hono's can quote the token. */
const JWT_ERRORS: Record<string, [ErrorCode, string]> = {
  JwtTokenExpired: ["token_expired", "the token has expired: get a new one"],
  JwtTokenNotBefore: ["token_not_yet_valid", "the token is not valid yet (nbf)"],
  JwtTokenIssuedAt: ["token_not_yet_valid", "the token was issued in the future (iat)"],
  JwtTokenIssuer: ["token_issuer", "the token's issuer (iss) is not the one this Worker accepts"],
  JwtTokenAudience: ["token_audience", "the token's audience (aud) does not include this Worker's"],
  JwtPayloadRequiresAud: ["token_audience", "the token has no audience (aud), and this Worker requires one"],
};

async function verifyToken(token: string, config: AuthConfig): Promise<JWTPayload> {
  const options = {
    ...(config.issuer ? { iss: config.issuer } : {}),
    ...(config.audience ? { aud: config.audience } : {}),
  };
  let alg: string | undefined;
  try {
    alg = decodeHeader(token).alg;
  } catch {
    throw new AuthError(401, "token_invalid", "the token is not a JWT");
  }
  try {
    if (alg === "HS256" && config.jwtSecret) return await verify(token, config.jwtSecret, { alg: "HS256", ...options });
    if ((alg === "RS256" || alg === "ES256") && config.jwksUrl) {
      const keys = await jwks(config.jwksUrl, decodeHeader(token).kid, config.jwksRefreshMs);
      return await verifyWithJwks(token, { keys, allowedAlgorithms: ["RS256", "ES256"], verification: options });
    }
  } catch (err) {
    if (err instanceof AuthError) throw err;
    const [code, message] = JWT_ERRORS[(err as Error).name] ?? ["token_invalid", "the token's signature or claims are not valid"];
    throw new AuthError(401, code, message);
  }
  throw new AuthError(
    401,
    "token_invalid",
    `this Worker does not accept ${String(alg).slice(0, 10)} tokens (configure JWT_SECRET for HS256, JWT_JWKS_URL for RS256/ES256)`,
  );
}

/**
 * JWKS per URL, kept for 10 minutes. A token with a key id not in the set (the provider rotated
 * its keys) refetches, but at most once per `refreshMs`, so random key ids cannot make every
 * request a fetch.
 */
const JWKS_TTL_MS = 600_000;
const jwksCache = new Map<string, { keys: HonoJsonWebKey[]; fetchedAt: number }>();

async function jwks(url: string, kid: string | undefined, refreshMs: number): Promise<HonoJsonWebKey[]> {
  const now = Date.now();
  const cached = jwksCache.get(url);
  const known = cached?.keys.some((k) => k.kid === kid);
  if (cached && now - cached.fetchedAt < JWKS_TTL_MS && (known || now - cached.fetchedAt < refreshMs)) return cached.keys;
  let keys: unknown;
  try {
    const res = await fetch(url, { headers: { Accept: "application/json" } });
    if (!res.ok) throw new Error(`status ${res.status}`);
    keys = ((await res.json()) as { keys?: unknown }).keys;
    if (!Array.isArray(keys)) throw new Error("no keys array");
  } catch {
    // A stale key set is better than refusing everyone while the provider blinks.
    if (cached) return cached.keys;
    throw new AuthError(503, "jwks_unavailable", "the identity provider's keys (JWT_JWKS_URL) could not be fetched; try again");
  }
  jwksCache.set(url, { keys: keys as HonoJsonWebKey[], fetchedAt: now });
  return keys as HonoJsonWebKey[];
}
