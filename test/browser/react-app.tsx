/** A page using client/react's useChannel, as a Next.js client component would; bundled by react.test.ts. */
import { createRoot } from "react-dom/client";
import { useChannel } from "../../client/react.ts";

interface Item {
  id: number;
  title: string;
}

function Items({ host, token }: { host: string; token: string }) {
  const { status, events, state } = useChannel<Item>("items", { host, token, keep: 5 });
  return (
    <main>
      <p id="status">{status}</p>
      <p id="events">{events.length}</p>
      <ul id="rows">{state === null ? <li id="no-state">no state yet</li> : [...state].sort((a, b) => a.id - b.id).map((r) => <li key={r.id}>{r.title}</li>)}</ul>
    </main>
  );
}

const params = new URLSearchParams(location.search);
createRoot(document.getElementById("root")!).render(<Items host={params.get("host")!} token={params.get("token")!} />);
