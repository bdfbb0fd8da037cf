/**
 * The demo page: the `todos` channel, live. Built into public/app.js by `npm run build`.
 * Rows come from the dev stack's demo API (`?api=`) when present, then only from events.
 */
import { subscribe, type ChangeEvent, type ChannelEvent } from "../client/index.ts";

interface Todo {
  id: number;
  title: string;
  done: boolean;
  created_at: string;
}

type Events = { insert: ChangeEvent<Todo>; update: ChangeEvent<Todo>; delete: ChangeEvent<Todo>; truncate: ChangeEvent<Todo> };

const params = new URLSearchParams(location.search);
const api = params.get("api");
// `npm run dev` mints a token for the todos channel and puts it in the demo URL.
const token = params.get("token") ?? undefined;
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const rows = new Map<number, Todo>();
let loading: Promise<void> | null = null;
let pending: ChannelEvent<string, ChangeEvent<Todo>>[] = [];

function render(flashId?: number): void {
  const body = $("rows");
  body.replaceChildren(
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

function apply(e: ChannelEvent<string, ChangeEvent<Todo>>): void {
  const change = e.data;
  if (change.op === "TRUNCATE") rows.clear();
  else if (change.new) rows.set(change.new.id, change.new);
  else if (change.old) rows.delete(change.old.id);
  const li = document.createElement("li");
  const op = document.createElement("span");
  op.className = `op ${change.op}`;
  op.textContent = change.op;
  li.append(op, ` #${change.key.id ?? ""} ${change.new?.title ?? change.old?.title ?? ""}`);
  const changes = $("changes");
  changes.prepend(li);
  while (changes.children.length > 20) changes.lastElementChild!.remove();
  render(change.new?.id);
}

/** Loads the current rows; events that arrive meanwhile are applied after, in order. */
async function reload(): Promise<void> {
  if (!api) return;
  loading = (async () => {
    const res = await fetch(new URL("/todos", api));
    const list = (await res.json()) as Todo[];
    rows.clear();
    for (const t of list) rows.set(t.id, t);
    render();
  })();
  try {
    await loading;
  } finally {
    loading = null;
    const queued = pending;
    pending = [];
    queued.forEach(apply);
  }
}

const sub = subscribe<Events>({
  host: location.host,
  channel: "todos",
  token,
  onStatus: (status) => {
    const el = $("status");
    el.textContent = status;
    el.dataset.status = status;
    if (status === "open" && rows.size === 0) void reload();
  },
  onEvents: (events) => {
    for (const e of events) {
      if (loading) pending.push(e);
      else apply(e);
    }
    $("seq").textContent = String(sub.seq);
  },
  onReset: () => void reload(),
});

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
