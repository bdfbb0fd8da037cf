/**
 * Minting browser tokens in your app's backend (Node, a Worker, Deno: Web Crypto only).
 *
 * ```ts
 * import { mintToken } from "pg-edge-realtime/token";
 * const token = await mintToken({ secret: process.env.JWT_SECRET!, sub: user.id, channels: ["todos", `tenant:${user.tenantId}`] });
 * ```
 * The Worker verifies it with the same JWT_SECRET (HS256) and lets it join the listed channels.
 */
import { sign } from "hono/utils/jwt/jwt";
import { MIN_JWT_SECRET_LENGTH } from "../protocol/wire.ts";

/** Options of {@link mintToken}. */
export interface MintTokenOptions {
  /** The Worker's JWT_SECRET (at least 32 characters). */
  secret: string;
  /** Who the token is for (`sub`); connection limits count per subject. */
  sub: string;
  /** Channel patterns it may join: names, `*` globs, `{claim}` placeholders (`user:{sub}`). */
  channels: string[];
  /** Channel patterns it may broadcast on (client `broadcast` messages). Default none. */
  publish?: string[];
  /** Lifetime in seconds. Default 3600. */
  ttlSeconds?: number;
  /** `iss`, if the Worker requires one (JWT_ISSUER). Default none. */
  issuer?: string;
  /** `aud`, if the Worker requires one (JWT_AUDIENCE). Default none. */
  audience?: string;
  /** Other claims to include (referenced by `{claim}` patterns). Default none. */
  claims?: Record<string, string | number | boolean>;
  /** Name of the channels claim (the Worker's JWT_CHANNELS_CLAIM). Default `channels`. */
  channelsClaim?: string;
  /** Seconds since the epoch to count from. Default now. */
  now?: number;
}

/** Returns an HS256 JWT for the Worker. */
export async function mintToken(options: MintTokenOptions): Promise<string> {
  if (options.secret.length < MIN_JWT_SECRET_LENGTH)
    throw new Error(`mintToken: secret must be at least ${MIN_JWT_SECRET_LENGTH} characters, like the Worker's JWT_SECRET`);
  if (!options.sub) throw new Error("mintToken: sub (the user's id) is required");
  const iat = options.now ?? Math.floor(Date.now() / 1000);
  return sign(
    {
      ...options.claims,
      sub: options.sub,
      [options.channelsClaim ?? "channels"]: options.channels,
      ...(options.publish ? { publish: options.publish } : {}),
      iat,
      exp: iat + (options.ttlSeconds ?? 3600),
      ...(options.issuer ? { iss: options.issuer } : {}),
      ...(options.audience ? { aud: options.audience } : {}),
    },
    options.secret,
    "HS256",
  );
}
