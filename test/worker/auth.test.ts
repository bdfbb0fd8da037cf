/**
 * Only the right people: tokens, per-channel claims, public channels and origins are decided in
 * the Worker before any Durable Object is touched; connection, frame-size and rate limits are
 * enforced by the channel; the ingest secret can be rotated.
 */

import { evictDurableObject, listDurableObjectIds } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { sign } from "hono/utils/jwt/jwt";
import { describe, expect, it } from "vitest";
import { channelMatches, ingestBody, signBody } from "../../protocol/index.ts";
import { AuthError, authorize } from "../../worker/auth.ts";
import type { AuthConfig } from "../../worker/config.ts";
import { event, ingest, JWT_SECRET, postIngest, Socket, tokenFor, upgrade } from "./helpers.ts";

/** True when the channel's Durable Object was ever created. */
async function objectExists(channel: string): Promise<boolean> {
  const id = env.CHANNEL.idFromName(channel).toString();
  return (await listDurableObjectIds(env.CHANNEL)).some((i) => i.toString() === id);
}

async function refused(res: Response, status: number, code: string): Promise<void> {
  expect(res.status).toBe(status);
  expect(res.webSocket).toBeFalsy();
  expect(await res.json()).toMatchObject({ error: { code } });
}

describe("upgrade authorization (before the Durable Object)", () => {
  it("refuses a private channel without a token: 401 token_required, no object created", async () => {
    await refused(await upgrade("private-none", "", { token: null }), 401, "token_required");
    expect(await objectExists("private-none")).toBe(false);
  });

  it("lets a tenant-42 token join tenant:42 and refuses tenant:43 with 403, without creating it", async () => {
    const token = await tokenFor(["tenant:42"]);
    const ok = await upgrade("tenant:42", "", { token });
    expect(ok.status).toBe(101);
    await refused(await upgrade("tenant:43", "", { token }), 403, "channel_forbidden");
    expect(await objectExists("tenant:43")).toBe(false);
  });

  it("expands {claim} placeholders and * globs in the token's channel patterns", async () => {
    const token = await tokenFor(["user:{sub}", "tenant:{tenant}:*"], "alice", { claims: { tenant: 7 } });
    expect((await upgrade("user:alice", "", { token })).status).toBe(101);
    expect((await upgrade("tenant:7:orders", "", { token })).status).toBe(101);
    await refused(await upgrade("user:bob", "", { token }), 403, "channel_forbidden");
    await refused(await upgrade("tenant:70:orders", "", { token }), 403, "channel_forbidden");
    await refused(await upgrade("tenant:7", "", { token }), 403, "channel_forbidden");
  });

  it("accepts Authorization: Bearer from clients that can set headers", async () => {
    const token = await tokenFor(["bearer"]);
    const res = await upgrade("bearer", "", { token: null, headers: { Authorization: `Bearer ${token}` } });
    expect(res.status).toBe(101);
  });

  it("lets anyone join a public channel (PUBLIC_CHANNELS=public:*), but refuses a bad token there too", async () => {
    expect((await upgrade("public:news", "", { token: null })).status).toBe(101);
    await refused(await upgrade("public:news", "", { token: "not.a.jwt" }), 401, "token_invalid");
  });

  it.each([
    ["expired", async () => tokenFor(["t"], "u", { ttlSeconds: 60, now: Math.floor(Date.now() / 1000) - 3600 }), "token_expired"],
    ["not yet valid", async () => sign({ sub: "u", channels: ["t"], nbf: Math.floor(Date.now() / 1000) + 600 }, JWT_SECRET, "HS256"), "token_not_yet_valid"],
    ["signed with another secret", async () => sign({ sub: "u", channels: ["t"] }, "another-secret-another-secret-0123456789", "HS256"), "token_invalid"],
    ["unsigned (alg none)", async () => `${btoa('{"alg":"none","typ":"JWT"}')}.${btoa('{"sub":"u","channels":["t"]}')}.`, "token_invalid"],
    ["garbage", async () => "garbage", "token_invalid"],
    ["HS512", async () => sign({ sub: "u", channels: ["t"] }, JWT_SECRET, "HS512"), "token_invalid"],
  ])("refuses a token that is %s with 401 %s", async (_, make, code) => {
    const token = await make();
    const res = await upgrade("t", "", { token });
    await refused(res, 401, code);
  });

  it("refuses an upgrade from an origin outside ALLOWED_ORIGINS, and accepts the listed one", async () => {
    await refused(await upgrade("origins", "", { headers: { Origin: "https://evil.example" } }), 403, "origin_not_allowed");
    expect((await upgrade("origins", "", { headers: { Origin: "https://app.example" } })).status).toBe(101);
  });
});

describe("authorize() with issuer and audience configured", () => {
  const config: AuthConfig = {
    jwtSecret: JWT_SECRET,
    jwksUrl: null,
    jwksRefreshMs: 60_000,
    issuer: "https://app.example",
    audience: "realtime",
    channelsClaim: "rooms",
    publishClaim: "publish",
    publicChannels: [],
    allowTokensWithoutExp: false,
    allowedOrigins: null,
  };
  const request = (token: string) => new Request(`http://edge/parties/main/x?token=${token}`);

  it("checks iss and aud, and reads channels from the configured claim", async () => {
    const good = await tokenFor(["x"], "u", { issuer: "https://app.example", audience: "realtime", channelsClaim: "rooms" });
    await expect(authorize(request(good), "x", config)).resolves.toMatchObject({ sub: "u" });
    const wrongIss = await tokenFor(["x"], "u", { issuer: "https://other.example", audience: "realtime", channelsClaim: "rooms" });
    await expect(authorize(request(wrongIss), "x", config)).rejects.toMatchObject({ status: 401, code: "token_issuer" });
    const wrongAud = await tokenFor(["x"], "u", { issuer: "https://app.example", audience: "other", channelsClaim: "rooms" });
    await expect(authorize(request(wrongAud), "x", config)).rejects.toMatchObject({ status: 401, code: "token_audience" });
    const wrongClaim = await tokenFor(["x"], "u", { issuer: "https://app.example", audience: "realtime" });
    await expect(authorize(request(wrongClaim), "x", config)).rejects.toBeInstanceOf(AuthError);
  });

  it("matches patterns exactly: dots and dashes are literal, * stays within channel characters", () => {
    expect(channelMatches("a.b", "a.b", null)).toBe(true);
    expect(channelMatches("a.b", "axb", null)).toBe(false);
    expect(channelMatches("room-*", "room-1:x", null)).toBe(true);
    expect(channelMatches("user:{sub}", "user:", { sub: "" })).toBe(false);
    expect(channelMatches("user:{sub}", "user:a:b", { sub: "a:b" })).toBe(false); // a claim cannot smuggle ':' into a pattern
    expect(channelMatches("*", "anything:at@all", null)).toBe(true);
  });
});

describe("channel limits", () => {
  it("allows 5 connections per user per channel; the 6th gets an error frame and close 1008", async () => {
    const token = await tokenFor(["limits"], "heavy-user");
    const five = await Promise.all(Array.from({ length: 5 }, () => Socket.open("limits", "", { token })));
    for (const s of five) await s.frameCount(1);
    const sixth = await Socket.open("limits", "", { token });
    await sixth.until(() => sixth.closed);
    expect(sixth.frames).toEqual([expect.objectContaining({ type: "error", code: "too_many_connections" })]);
    expect(sixth.closed!.code).toBe(1008);
    // Another user is not affected, and the five still receive events.
    const other = await Socket.open("limits");
    expect((await other.frameCount(1))[0]!.type).toBe("welcome");
    await ingest([event("limits", "still flowing")]);
    for (const s of five) expect((await s.eventCount(1))[0]!.data).toBe("still flowing");
  });

  it("refuses connections past MAX_SOCKETS_PER_CHANNEL (20 here) with channel_full", async () => {
    const sockets = await Promise.all(Array.from({ length: 20 }, () => Socket.open("full")));
    for (const s of sockets) await s.frameCount(1);
    const extra = await Socket.open("full");
    await extra.until(() => extra.closed);
    expect(extra.frames[0]).toMatchObject({ type: "error", code: "channel_full" });
  });

  it("closes a socket that sends a message over MAX_FRAME_BYTES with frame_too_large (1009)", async () => {
    const sock = await Socket.open("frames");
    await sock.frameCount(1);
    sock.ws.send("x".repeat(5000));
    await sock.until(() => sock.closed);
    expect(sock.frames[1]).toMatchObject({ type: "error", code: "frame_too_large" });
    expect(sock.closed!.code).toBe(1009);
  });

  it("closes a socket past MAX_MESSAGES_PER_SECOND with rate_limited, counting across hibernation", async () => {
    const sock = await Socket.open("rate");
    await sock.frameCount(1);
    for (let i = 0; i < 5; i++) sock.ws.send(`m${i}`);
    await sock.frameCount(6);
    await evictDurableObject(env.CHANNEL.get(env.CHANNEL.idFromName("rate")));
    for (let i = 5; i < 11; i++) sock.ws.send(`m${i}`);
    await sock.until(() => sock.closed);
    const errors = sock.frames.filter((f) => f.type === "error");
    expect(errors.slice(0, 10).every((f) => f.type === "error" && f.code === "unsupported_frame")).toBe(true);
    expect(errors.at(-1)).toMatchObject({ code: "rate_limited" });
    expect(sock.closed!.code).toBe(1008);
  });
});

describe("ingest secret", () => {
  it("accepts the previous secret during a rotation, and refuses any other", async () => {
    const body = ingestBody([event("rotation")]);
    expect((await postIngest(body, { secret: env.INGEST_SECRET_PREVIOUS! })).status).toBe(200);
    const other = ingestBody([event("rotation")]);
    expect((await postIngest(other, { secret: "some-other-secret-0123456789" })).status).toBe(401);
  });

  it("drops a captured request replayed inside the signature window, even after 10,000 newer events", async () => {
    const events = Array.from({ length: 100 }, () => event("replayed"));
    const body = ingestBody(events);
    const signature = await signBody(env.INGEST_SECRET!, body);
    const first = await postIngest(body, { signature });
    expect(await first.json()).toEqual({ accepted: 100, duplicates: 0 });
    for (let i = 0; i < 10; i++) {
      const res = await ingest(Array.from({ length: 1000 }, () => event("replayed")));
      expect(res.status).toBe(200);
    }
    const replay = await postIngest(body, { signature });
    expect(replay.status).toBe(200);
    expect(await replay.json()).toEqual({ accepted: 0, duplicates: 100 });
  });
});
