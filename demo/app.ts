/**
 * The demo page: the `todos` channel, live. Built into public/app.js by `npm run build`.
 * The current rows arrive as the channel's retained state (a snapshot, then events), so the page
 * never queries the database; the dev stack's demo API (`?api=`) only takes new todos and mints
 * tokens, as your backend would.
 */
import { type ChangeEvent, type ChannelEvent, type PresenceMember, subscribe } from "../client/index.ts";

interface Todo {
  id: number;
  title: string;
  done: boolean;
  created_at: string;
}

type Events = { insert: ChangeEvent<Todo>; update: ChangeEvent<Todo>; delete: ChangeEvent<Todo>; truncate: ChangeEvent<Todo> };

const params = new URLSearchParams(location.search);
const api = params.get("api");
// A token from the demo API (one per tab, like a backend per user), else the one in the URL.
const urlToken = params.get("token");
const token = api ? async () => ((await (await fetch(new URL("/token", api))).json()) as { token: string }).token : (urlToken ?? undefined);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const rows = new Map<number, Todo>();
const myName = `visitor ${Math.floor(Math.random() * 9000) + 1000}`;

function render(flashId?: number): void {
  $("rows").replaceChildren(
    ...[...rows.values()]
      .sort((a, b) => a.id - b.id)
      .map((t) => {
        const tr = document.createElement("tr");
        tr.dataset.id = String(t.id);
        if (t.id === flashId) tr.className = "flash";
        for (const text of [String(t.id), t.title, t.done ? "yes" : "no", new Date(t.created_at).toLocaleTimeString()]) {
          const td = document.createElement("td");
          td.textContent = text;
          tr.append(td);
        }
        return tr;
      }),
  );
}

function logChange(text: string, op: string): void {
  const li = document.createElement("li");
  const label = document.createElement("span");
  label.className = `op ${op}`;
  label.textContent = op;
  li.append(label, ` ${text}`);
  const changes = $("changes");
  changes.prepend(li);
  while (changes.children.length > 20) changes.lastElementChild!.remove();
}

function apply(e: ChannelEvent<string, ChangeEvent<Todo>>): void {
  const change = e.data;
  if (change.op === "TRUNCATE") rows.clear();
  else if (change.new) rows.set(change.new.id, change.new);
  else if (change.old) rows.delete(change.old.id);
  logChange(`#${change.key.id ?? ""} ${change.new?.title ?? change.old?.title ?? ""}`, change.op);
  render(change.new?.id);
}

function showPresence(members: PresenceMember[]): void {
  $("watching").textContent = String(members.length);
  $("members").replaceChildren(
    ...members.map((m) => {
      const li = document.createElement("li");
      const name = (m.state as { name?: string } | null)?.name ?? m.user ?? "someone";
      li.textContent = m.id === sub.member ? `${name} (you)` : name;
      return li;
    }),
  );
}

const sub = subscribe<Events>({
  host: location.host,
  channel: "todos",
  token,
  presence: { state: { name: myName }, onChange: showPresence },
  onStatus: (status) => {
    const el = $("status");
    el.textContent = status;
    el.dataset.status = status;
  },
  // The whole table, from the channel (retain => true): on first connect and after a reset.
  onSnapshot: ({ rows: snapshot }) => {
    rows.clear();
    for (const r of snapshot) {
      // A row too large to retain comes as its key alone (`oversized`); the demo's todos never are.
      if (r.row === null) continue;
      const todo = r.row as unknown as Todo;
      rows.set(todo.id, todo);
    }
    render();
  },
  onEvents: (events) => {
    for (const e of events) apply(e);
    $("seq").textContent = String(sub.seq);
  },
  onBroadcast: ({ event, data }) => {
    if (event === "wave") logChange(`${(data as { name?: string })?.name ?? "someone"} waved`, "WAVE");
  },
});

$("wave").addEventListener("click", () => sub.broadcast("wave", { name: myName }));

if (api) {
  const form = $<HTMLFormElement>("add");
  form.hidden = false;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("title");
    const title = input.value.trim();
    if (!title) return;
    input.value = "";
    await fetch(new URL("/todos", api), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ title }) });
    // No local insert: the row appears when its event comes back through the edge.
  });
} else {
  $("no-api").hidden = false;
}
