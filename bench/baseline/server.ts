/**
 * The baseline: the LISTEN design most tutorials start from, built as well as that design allows.
 * One Node process holds LISTEN data_changes; a per-row trigger sends pg_notify('data_changes',
 * json); each payload goes to every WebSocket in its room (the `channel` field), the
 * payload string sent as received (no re-serialization per socket).
 *
 * Env: DATABASE_URL, PORT. Prints "listening <port>" when ready.
 */
import pg from "pg";
import { type WebSocket, WebSocketServer } from "ws";

const db = new pg.Client({ connectionString: process.env.DATABASE_URL });
await db.connect();
await db.query("LISTEN data_changes");

const rooms = new Map<string, Set<WebSocket>>();
const wss = new WebSocketServer({ port: Number(process.env.PORT ?? 0), host: "127.0.0.1", perMessageDeflate: false });

wss.on("connection", (ws, req) => {
  const room = new URL(req.url ?? "/", "http://x").searchParams.get("room") ?? "default";
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.on("close", () => members.delete(ws));
});

db.on("notification", (msg) => {
  if (!msg.payload) return;
  const { channel } = JSON.parse(msg.payload) as { channel?: string };
  for (const ws of rooms.get(channel ?? "default") ?? []) {
    if (ws.readyState === 1) ws.send(msg.payload);
  }
});

wss.on("listening", () => {
  const address = wss.address();
  process.stdout.write(`listening ${typeof address === "string" || address === null ? address : address.port}\n`);
});
process.on("SIGTERM", async () => {
  wss.close();
  await db.end();
  process.exit(0);
});
