/** A page using client/react's useChannel, as a Next.js client component would; bundled by react.test.ts. */
import { createRoot } from "react-dom/client";
import { useChannel } from "../../client/react.ts";

interface Item {
  /** A number, or (numbers: "exact", the default) the digits of an id past 2^53. */
  id: number | string;
  title: string;
}

function Items({ host, token, channel }: { host: string; token: string; channel: string }) {
  const { status, events, state, oversized } = useChannel<Item>(channel, { host, token, keep: 5 });
  return (
    <main>
      <p id="status">{status}</p>
      <p id="events">{events.length}</p>
      <p id="count">{state === null ? "loading" : String(state.length)}</p>
      <ul id="rows">
        {state === null ? (
          <li id="no-state">no state yet</li>
        ) : (
          [...state]
            .sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1))
            .map((r) => (
              <li key={String(r.id)} data-id={String(r.id)} data-type={typeof r.id}>
                {r.title.length > 100 ? `${r.title.length} characters` : r.title}
              </li>
            ))
        )}
      </ul>
      <ul id="oversized">
        {oversized.map((r) => (
          <li key={JSON.stringify(r.key)}>{String(r.key.id)}</li>
        ))}
      </ul>
    </main>
  );
}

const params = new URLSearchParams(location.search);
createRoot(document.getElementById("root")!).render(
  <Items host={params.get("host")!} token={params.get("token")!} channel={params.get("channel") ?? "items"} />,
);
