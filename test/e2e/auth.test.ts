/**
 * Authentication with the real Worker: RS256/ES256 tokens from an identity provider's JWKS (a real
 * HTTP server here), tokens minted by the CLI, and rotating the relay's ingest secret under load
 * without dropping an event.
 */
import { generateKeyPairSync, type JsonWebKey } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { HonoJsonWebKey } from "hono/utils/jwt/jws";
import { sign } from "hono/utils/jwt/jwt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SIGNATURE_HEADER, signBody } from "../../protocol/index.ts";
import { expectExactlyOnceInOrder, writeNumbered } from "../faults/ledger.ts";
import { recordingClient } from "../support/client.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { startFaultProxy } from "../support/fault-proxy.ts";
import { caughtUp, relayEvent, spawnCli, startRelay } from "../support/relay.ts";
import { TestSubscriber, upgradeStatus } from "../support/subscriber.ts";
import { startTcpProxy } from "../support/tcp-proxy.ts";
import { startTestWorker, TEST_JWT_SECRET, type TestWorker } from "../support/worker.ts";

/** An identity provider's signing key: the private JWK (for signing) and the public one (for JWKS). */
function providerKey(kind: "rsa" | "ec", kid: string): { private: HonoJsonWebKey; public: JsonWebKey } {
  const pair = kind === "rsa" ? generateKeyPairSync("rsa", { modulusLength: 2048 }) : generateKeyPairSync("ec", { namedCurve: "P-256" });
  const alg = kind === "rsa" ? "RS256" : "ES256";
  return {
    private: { ...(pair.privateKey.export({ format: "jwk" }) as HonoJsonWebKey), kid, alg },
    public: { ...pair.publicKey.export({ format: "jwk" }), kid, alg, use: "sig" },
  };
}

const joinStatus = async (worker: TestWorker, channel: string, token?: string) =>
  (await upgradeStatus(`${worker.url}/parties/main/${channel}${token ? `?token=${token}` : ""}`)).status;

describe("tokens from an identity provider (JWKS)", () => {
  let jwksServer: Server;
  let worker: TestWorker;
  const published: JsonWebKey[] = [];
  let fetches = 0;
  let providerDown = false;
  const rsa = providerKey("rsa", "rsa-1");
  const ec = providerKey("ec", "ec-1");
  const now = () => Math.floor(Date.now() / 1000);
  const claims = (channels: string[]) => ({ sub: "idp-user", channels, iss: "https://idp.example", aud: "realtime", iat: now(), exp: now() + 300 });

  beforeAll(async () => {
    published.push(rsa.public, ec.public);
    jwksServer = createServer((_req, res) => {
      fetches++;
      if (providerDown) return void res.writeHead(503).end();
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ keys: published }));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve));
    worker = await startTestWorker({
      PUBLIC_CHANNELS: "",
      JWT_JWKS_URL: `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`,
      JWT_ISSUER: "https://idp.example",
      JWT_AUDIENCE: "realtime",
      JWT_JWKS_REFRESH_SECONDS: "0",
    });
  });

  afterAll(async () => {
    await worker?.dispose();
    jwksServer?.close();
  });

  it("accepts RS256 and ES256 tokens whose key is in the JWKS, for the channels they list", async () => {
    const rs = await sign(claims(["idp:room"]), rsa.private);
    const es = await sign(claims(["idp:room"]), ec.private);
    const sub = await TestSubscriber.connect(worker.url, "idp:room", { token: rs });
    expect(sub.welcome.channel).toBe("idp:room");
    sub.close();
    expect(await joinStatus(worker, "idp:room", es)).toBe(101);
    expect(await joinStatus(worker, "idp:other", es)).toBe(403);
  });

  it("refuses a token signed by a key the provider does not publish, and one with the wrong issuer", async () => {
    const stranger = providerKey("rsa", "rsa-1"); // same kid, different key
    expect(await joinStatus(worker, "idp:room", await sign(claims(["idp:room"]), stranger.private))).toBe(401);
    expect(await joinStatus(worker, "idp:room", await sign({ ...claims(["idp:room"]), iss: "https://evil.example" }, rsa.private))).toBe(401);
    // An HS256 token is not accepted as a substitute for the provider's keys.
    expect(await joinStatus(worker, "idp:room", await sign(claims(["idp:room"]), "x".repeat(40), "HS256"))).toBe(401);
  });

  it("picks up a rotated key: a token with a new kid refetches the JWKS", async () => {
    const next = providerKey("ec", "ec-2");
    const token = await sign(claims(["idp:room"]), next.private);
    expect(await joinStatus(worker, "idp:room", token)).toBe(401);
    published.push(next.public);
    const before = fetches;
    expect(await joinStatus(worker, "idp:room", token)).toBe(101);
    expect(fetches).toBe(before + 1);
    // Known keys are served from the cache.
    expect(await joinStatus(worker, "idp:room", token)).toBe(101);
    expect(fetches).toBe(before + 1);
  });

  it("keeps using the cached keys while the provider is down", async () => {
    providerDown = true;
    try {
      expect(await joinStatus(worker, "idp:room", await sign(claims(["idp:room"]), rsa.private))).toBe(101);
      const unknown = providerKey("rsa", "rsa-9");
      expect(await joinStatus(worker, "idp:room", await sign(claims(["idp:room"]), unknown.private))).toBe(401);
    } finally {
      providerDown = false;
    }
  });
});

describe("the CLI's token command", () => {
  it("prints a token the Worker accepts for exactly the channels given", async () => {
    const worker = await startTestWorker({ PUBLIC_CHANNELS: "" });
    try {
      const child = spawnCli(["token", "--sub", "ops", "--channels", "todos,tenant:{sub}", "--ttl", "60"], { JWT_SECRET: TEST_JWT_SECRET });
      expect(await child.exited).toBe(0);
      const token = child.output().trim();
      expect(await joinStatus(worker, "todos", token)).toBe(101);
      expect(await joinStatus(worker, "tenant:ops", token)).toBe(101);
      expect(await joinStatus(worker, "tenant:other", token)).toBe(403);
      expect(await joinStatus(worker, "todos")).toBe(401);
    } finally {
      await worker.dispose();
    }
  });
});

describe("rotating the ingest secret", () => {
  let db: TestDatabase;
  const storage = mkdtempSync(join(tmpdir(), "rotation-"));

  beforeAll(async () => {
    db = await testDatabase("rotation");
  });

  afterAll(async () => {
    await db?.drop();
    rmSync(storage, { recursive: true, force: true });
  });

  it("follows the documented steps under load without dropping or repeating an event", async () => {
    const OLD = "old-ingest-secret-0123456789";
    const NEW = "new-ingest-secret-0123456789";
    let worker = await startTestWorker({ INGEST_SECRET: OLD }, { persistTo: storage });
    const ingest = await startFaultProxy(worker.url);
    const net = await startTcpProxy(worker.url);
    const { sub: client, seen, until } = recordingClient({ host: net.host, channel: "rotating" });
    const received = seen.events;
    const receivedAtLeast = (n: number) => until(() => received.length >= n, `${n} events`);
    /** Restarts the Worker on the same storage with new secrets; the proxies follow it. */
    const restart = async (vars: Record<string, string>) => {
      await worker.dispose();
      worker = await startTestWorker(vars, { persistTo: storage });
      ingest.target = worker.url;
      net.retarget(worker.url);
      net.cut(); // the client reconnects to the new Worker and resumes
    };
    let relay = startRelay({ databaseUrl: db.url, workerUrl: ingest.url, ingestSecret: OLD });
    try {
      await relayEvent(relay, "idle");
      await writeNumbered(db, "rotating", 1, 300, 10);
      await receivedAtLeast(300);

      // 1. The Worker gets the new secret and keeps the old one as previous.
      await restart({ INGEST_SECRET: NEW, INGEST_SECRET_PREVIOUS: OLD });
      await writeNumbered(db, "rotating", 301, 600, 10); // still signed with the old secret
      await receivedAtLeast(600);

      // 2. The relay switches to the new secret.
      await relay.stop();
      relay = startRelay({ databaseUrl: db.url, workerUrl: ingest.url, ingestSecret: NEW });
      await writeNumbered(db, "rotating", 601, 900, 10);
      await receivedAtLeast(900);

      // 3. The previous secret is removed; the old one is now refused.
      await restart({ INGEST_SECRET: NEW });
      await writeNumbered(db, "rotating", 901, 1200, 10);
      await receivedAtLeast(1200);
      await caughtUp(relay);
      expectExactlyOnceInOrder(received, "rotating", 1200);

      const body = JSON.stringify({ events: [{ id: "late", channel: "rotating", event: "n", data: null, ts: 0 }] });
      const stale = await fetch(`${worker.url}/ingest`, { method: "POST", headers: { [SIGNATURE_HEADER]: await signBody(OLD, body) }, body });
      expect(stale.status).toBe(401);
    } finally {
      client.close();
      await relay.stop();
      await net.close();
      await ingest.close();
      await worker.dispose();
    }
  });
});
