/**
 * The relay's /healthz, /readyz and /metrics, served by the real CLI process: readiness follows
 * leadership, the metrics count what was sent and show a backlog while the Worker is down, and
 * neither they nor the logs carry a secret.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { freePort } from "../../scripts/postgres.ts";
import { type TestDatabase, testDatabase } from "../support/db.ts";
import { type FaultProxy, startFaultProxy } from "../support/fault-proxy.ts";
import { type CliProcess, spawnCli } from "../support/relay.ts";
import { TestSubscriber } from "../support/subscriber.ts";
import { startTestWorker, TEST_SECRET, type TestWorker } from "../support/worker.ts";

let db: TestDatabase;
let worker: TestWorker;
let proxy: FaultProxy;

beforeAll(async () => {
  [db, worker] = await Promise.all([testDatabase("observe"), startTestWorker()]);
  proxy = await startFaultProxy(worker.url);
  await db.sql("create table t (id int primary key)");
  await db.sql("select realtime.watch('t')");
});

afterAll(async () => {
  await proxy?.close();
  await Promise.allSettled([worker?.dispose(), db?.drop()]);
});

async function relayWithHttp(): Promise<{ child: CliProcess; url: string }> {
  const port = await freePort();
  const child = spawnCli(["relay"], {
    DATABASE_URL: db.url,
    WORKER_URL: proxy.url,
    INGEST_SECRET: TEST_SECRET,
    RELAY_HTTP: `127.0.0.1:${port}`,
    RELAY_POLL_INTERVAL_MS: "100",
    RELAY_RETRY_BASE_MS: "20",
    RELAY_RETRY_MAX_MS: "100",
    LOG_LEVEL: "debug",
  });
  await child.waitForLog(["leading", "another relay leads; standing by"]);
  return { child, url: `http://127.0.0.1:${port}` };
}

/** One metric's value from Prometheus text (the first series, any labels). */
function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  return line ? Number(line.split(" ").at(-1)) : NaN;
}

it("reports health, leadership, what it sent, and a growing backlog while the Worker is down, with no secret anywhere", async () => {
  const leader = await relayWithHttp();
  const standby = await relayWithHttp();
  const sub = await TestSubscriber.connect(worker.url, "t");
  try {
    expect(await (await fetch(`${leader.url}/healthz`)).json()).toEqual({ ok: true });
    const roles = await Promise.all([leader, standby].map(async (r) => (await (await fetch(`${r.url}/readyz`)).json()) as { role: string }));
    expect(roles.map((r) => r.role).sort()).toEqual(["leader", "standby"]);
    const lead = roles[0]!.role === "leader" ? leader : standby;
    const stand = lead === leader ? standby : leader;

    await db.sql("insert into t select g from generate_series(1, 25) g");
    await sub.eventCount(25);
    await lead.child.waitForLog("batch acknowledged"); // the Worker's 2xx, after the sockets got them
    let text = await (await fetch(`${lead.url}/metrics`)).text();
    expect(metric(text, "relay_events_sent_total")).toBe(25);
    expect(metric(text, "relay_leader")).toBe(1);
    expect(metric(text, "relay_connected")).toBe(1);
    expect(metric(text, "relay_batches_total")).toBeGreaterThanOrEqual(1);
    expect(metric(text, "relay_oldest_undelivered_seconds")).toBe(0);
    expect(metric(text, "relay_cursor_xmin")).toBeGreaterThan(0);
    expect(text).toContain('name="default"');
    expect(metric(await (await fetch(`${stand.url}/metrics`)).text(), "relay_leader")).toBe(0);

    // The Worker goes away: events wait, their age shows, retries count.
    proxy.mode = "error500";
    await db.sql("insert into t values (100)");
    await db.sql("update realtime.outbox set created_at = now() - interval '42 seconds' where payload->'key'->>'id' = '100'");
    await lead.child.waitForLog("ingest failed, retrying");
    text = await (await fetch(`${lead.url}/metrics`)).text();
    expect(metric(text, "relay_oldest_undelivered_seconds")).toBeGreaterThanOrEqual(42);
    expect(metric(text, "relay_retries_total")).toBeGreaterThanOrEqual(1);
    proxy.mode = "pass";
    await sub.eventCount(26);

    for (const out of [text, lead.child.output(), stand.child.output()]) {
      expect(out).not.toContain(TEST_SECRET);
      expect(out).not.toContain("postgres:postgres@");
    }
    // Logs are JSON lines with level labels.
    const lines = lead.child
      .output()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { level: string; msg: string; time: string });
    expect(lines.find((l) => l.msg === "leading")).toMatchObject({ level: "info" });
    expect(lines.find((l) => l.msg === "ingest failed, retrying")).toMatchObject({ level: "warn" });
  } finally {
    proxy.mode = "pass";
    sub.close();
    leader.child.kill("SIGKILL");
    standby.child.kill("SIGKILL");
  }
});

it("refuses an --http it cannot use with a clear message", async () => {
  const child = spawnCli(["relay", "--http", "nonsense"], { DATABASE_URL: db.url, WORKER_URL: worker.url, INGEST_SECRET: TEST_SECRET });
  expect(await child.exited).toBe(2);
  expect(child.output()).toMatch(/--http \(RELAY_HTTP\) must be host:port or off/);
});
