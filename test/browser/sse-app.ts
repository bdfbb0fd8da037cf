/** A page using client/'s subscribe() with its defaults, bundled by sse.test.ts: it shows the transport in use, the status and every event. */
import { subscribe } from "../../client/index.ts";

const params = new URLSearchParams(location.search);
const status = document.getElementById("status")!;
const transport = document.getElementById("transport")!;
const list = document.getElementById("events")!;
const sub = subscribe({
  host: params.get("host")!,
  channel: params.get("channel")!,
  token: params.get("token")!,
  // Quick retries: the test's network refuses every WebSocket.
  socket: { minReconnectionDelay: 50, maxReconnectionDelay: 200 },
  onStatus: (s) => {
    status.textContent = s;
    transport.textContent = sub.transport;
  },
  onEvents: (events) => {
    for (const e of events) {
      const li = document.createElement("li");
      li.dataset.seq = String(e.seq);
      li.textContent = JSON.stringify(e.data);
      list.append(li);
    }
  },
});
