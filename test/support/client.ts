/** The real client (client/ over partysocket, in Node), recording everything it reports. */
import WebSocket from "ws";
import { type ChannelEvent, type PresenceMember, type SnapshotRow, type SubscribeOptions, type Subscription, subscribe } from "../../client/index.ts";
import { waitUntil } from "./subscriber.ts";

/** What a recording client saw. */
export interface Seen {
  events: ChannelEvent[];
  resets: { reason: string; seq: number }[];
  statuses: string[];
  snapshots: { rows: SnapshotRow[]; seq: number; overflow: boolean }[];
  members: PresenceMember[];
  broadcasts: unknown[];
}

/** A subscription whose callbacks record into `seen`; `until` waits on it (re-checked on every callback). */
export function recordingClient(options: Omit<SubscribeOptions, "WebSocket">): {
  sub: Subscription;
  seen: Seen;
  until<T>(check: () => T | undefined | null | false, what: string, timeoutMs?: number): Promise<T>;
} {
  const seen: Seen = { events: [], resets: [], statuses: [], snapshots: [], members: [], broadcasts: [] };
  const listeners = new Set<() => void>();
  const record =
    <A extends unknown[]>(f: (...args: A) => void) =>
    (...args: A) => {
      f(...args);
      for (const l of listeners) l();
    };
  const sub = subscribe({
    WebSocket,
    // Fast reconnects: the tests cut connections on purpose, and wait for the client to come back
    // while events flow (a deploy's jitter is the storm test's to set, and jitter.test.ts's).
    socket: { minReconnectionDelay: 50, maxReconnectionDelay: 200 },
    reconnectJitterMs: 0,
    ...options,
    onEvents: record((e) => seen.events.push(...e)),
    onReset: record((r) => seen.resets.push(r)),
    onStatus: record((s) => seen.statuses.push(s)),
    onSnapshot: record((s) => seen.snapshots.push(s)),
    onBroadcast: record((b) => seen.broadcasts.push(b)),
    presence: options.presence ? { ...options.presence, onChange: record((m) => (seen.members = m)) } : undefined,
  });
  const until = <T>(check: () => T | undefined | null | false, what: string, timeoutMs = 60_000) =>
    waitUntil(
      check,
      (n) => {
        listeners.add(n);
        return () => listeners.delete(n);
      },
      () => `${what}: ${JSON.stringify(seen).slice(0, 400)}`,
      timeoutMs,
    );
  return { sub, seen, until };
}
