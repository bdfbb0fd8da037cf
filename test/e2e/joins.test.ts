/**
 * Joins with the real Worker over real sockets: a refused join is closed right after its error
 * frame (it took ~10 s when the refusal was a hibernatable socket), and a token without `exp` is
 * refused unless the Worker allows it.
 */
import { sign } from "hono/utils/jwt/jwt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { mintToken } from "../../token/index.ts";
import { upgradeStatus } from "../support/subscriber.ts";
import { startTestWorker, TEST_JWT_SECRET, type TestWorker } from "../support/worker.ts";

let worker: TestWorker;
let lenient: TestWorker;

beforeAll(async () => {
  [worker, lenient] = await Promise.all([
    startTestWorker({ PUBLIC_CHANNELS: "", MAX_CONNECTIONS_PER_USER: "1" }),
    startTestWorker({ PUBLIC_CHANNELS: "", ALLOW_TOKENS_WITHOUT_EXP: "true" }),
  ]);
});

afterAll(async () => {
  await Promise.allSettled([worker?.dispose(), lenient?.dispose()]);
});

/** Opens a socket and resolves with every frame it got and when it closed, relative to its error frame. */
function join(url: string): Promise<{ frames: { type: string; code?: string }[]; code: number; closeAfterErrorMs: number | null }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const frames: { type: string; code?: string }[] = [];
    let errorAt: number | null = null;
    ws.on("message", (data) => {
      const frame = JSON.parse(data.toString()) as { type: string; code?: string };
      frames.push(frame);
      if (frame.type === "error") errorAt = performance.now();
    });
    ws.on("close", (code) => resolve({ frames, code, closeAfterErrorMs: errorAt === null ? null : performance.now() - errorAt }));
    ws.on("error", reject);
  });
}

const wsUrl = (w: TestWorker, channel: string, query: string) => `${w.url.replace(/^http/, "ws")}/parties/main/${channel}?${query}`;

describe("a refused join", () => {
  it.each([
    ["a filter that is not JSON", "filter=nope", "invalid_filter"],
    ["a since that is not a number", "since=abc&epoch=x", "invalid_query"],
  ])("with %s gets its error frame, then its close at once", async (_, query, code) => {
    const token = await mintToken({ secret: TEST_JWT_SECRET, sub: `u-${code}`, channels: ["joins"] });
    const result = await join(wsUrl(worker, "joins", `${query}&token=${token}`));
    expect(result.frames).toEqual([expect.objectContaining({ type: "error", code })]);
    expect(result.code).toBe(1008);
    // Before: the close came ~10 s after the error frame. A generous bound, far from either.
    expect(result.closeAfterErrorMs).toBeLessThan(3000);
  });

  it("past the per-user limit gets its error frame, then its close at once, while the first socket stays", async () => {
    const token = await mintToken({ secret: TEST_JWT_SECRET, sub: "one-socket", channels: ["limited"] });
    const first = new WebSocket(wsUrl(worker, "limited", `token=${token}`));
    await new Promise<void>((resolve) => first.on("message", () => resolve()));
    const second = await join(wsUrl(worker, "limited", `token=${token}`));
    expect(second.frames).toEqual([expect.objectContaining({ type: "error", code: "too_many_connections" })]);
    expect(second.closeAfterErrorMs).toBeLessThan(3000);
    expect(first.readyState).toBe(WebSocket.OPEN);
    first.close();
  });
});

describe("tokens without exp", () => {
  it("are refused with 401 token_invalid by default, and accepted when ALLOW_TOKENS_WITHOUT_EXP is set", async () => {
    const forever = await sign({ sub: "forever", channels: ["noexp"], iat: Math.floor(Date.now() / 1000) }, TEST_JWT_SECRET, "HS256");
    const refused = await upgradeStatus(`${worker.url}/parties/main/noexp?token=${forever}`);
    expect(refused.status).toBe(401);
    expect(refused.body).toMatchObject({ error: { code: "token_invalid", message: expect.stringContaining("ALLOW_TOKENS_WITHOUT_EXP") } });
    expect((await upgradeStatus(`${lenient.url}/parties/main/noexp?token=${forever}`)).status).toBe(101);
    // A token with exp is accepted by both.
    const expiring = await mintToken({ secret: TEST_JWT_SECRET, sub: "expiring", channels: ["noexp"] });
    expect((await upgradeStatus(`${worker.url}/parties/main/noexp?token=${expiring}`)).status).toBe(101);
  });
});
