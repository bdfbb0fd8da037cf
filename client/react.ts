/**
 * React: `useChannel(channel, options)` for the apps the seeds are written for (Next.js and the
 * like; use it in a client component). It subscribes while mounted, resubscribes when the channel
 * or filter changes, and returns the connection status, the recent events and, on a channel that
 * retains rows, the current rows (snapshot plus the changes after it).
 *
 * ```tsx
 * "use client";
 * const { status, state } = useChannel<Todo>("todos", { host: "realtime.example.com", token: getToken });
 * return <ul>{state?.map((t) => <li key={t.id}>{t.title}</li>)}</ul>;
 * ```
 */
import { useEffect, useMemo, useRef, useState } from "react";
import { subscribe, type ChangeEvent, type ChannelEvent, type PresenceMember, type RowFilter, type Status, type SubscribeOptions, type Subscription } from "./index.ts";

/** Options of {@link useChannel}: those of `subscribe()` but the channel and callbacks, plus `keep`. */
export interface UseChannelOptions extends Omit<SubscribeOptions, "channel" | "onEvents" | "onSnapshot" | "onStatus" | "presence"> {
  /** How many recent events `events` keeps. Default 100. */
  keep?: number;
  /** Join presence with this state (`members` is then filled). Default: not listed. */
  presence?: { state?: unknown };
}

/** What {@link useChannel} returns. */
export interface ChannelView<Row> {
  status: Status;
  /** The most recent events, oldest first (at most `keep`). */
  events: ChannelEvent[];
  /** The current rows, on a channel that retains them (`watch(..., retain => true)`); null until a snapshot arrives, or if the channel does not retain (or overflowed). */
  state: Row[] | null;
  /** Presence members, when joined with `presence`. */
  members: PresenceMember[];
  /** The live subscription (for broadcast, setPresence), once mounted. */
  subscription: Subscription | null;
}

/** Row key inside the state: table plus primary key, as the channel keys retained rows. */
function rowKey(schema: string, table: string, key: unknown): string {
  return `${schema}.${table}:${JSON.stringify(key)}`;
}

/** Subscribes to `channel` while the component is mounted. */
export function useChannel<Row = Record<string, unknown>>(channel: string, options: UseChannelOptions): ChannelView<Row> {
  const [status, setStatus] = useState<Status>("connecting");
  const [events, setEvents] = useState<ChannelEvent[]>([]);
  const [rows, setRows] = useState<Map<string, Row> | null>(null);
  const [members, setMembers] = useState<PresenceMember[]>([]);
  const [subscription, setSubscription] = useState<Subscription | null>(null);
  // Options read at (re)subscribe time; a new object each render must not resubscribe.
  const latest = useRef(options);
  latest.current = options;
  const filterKey = JSON.stringify(options.filter ?? null);
  const presenceKey = options.presence ? "1" : "";

  useEffect(() => {
    const { keep = 100, presence, filter, ...rest } = latest.current;
    setStatus("connecting");
    setEvents([]);
    setRows(null);
    const sub = subscribe({
      ...rest,
      channel,
      filter: filter as RowFilter | undefined,
      onStatus: setStatus,
      onSnapshot: ({ rows: snapshot, overflow }) => {
        if (overflow) return setRows(null);
        setRows(new Map(snapshot.map((r) => [rowKey(r.schema, r.table, r.key), r.row as Row])));
      },
      onEvents: (batch) => {
        setEvents((prev) => [...prev, ...batch].slice(-keep));
        setRows((prev) => {
          if (prev === null) return prev;
          const next = new Map(prev);
          for (const e of batch) {
            const d = e.data as Partial<ChangeEvent> | null;
            if (!d || typeof d !== "object" || typeof d.table !== "string" || typeof d.schema !== "string") continue;
            if (d.op === "TRUNCATE") {
              for (const k of [...next.keys()]) if (k.startsWith(`${d.schema}.${d.table}:`)) next.delete(k);
            } else if (d.op === "DELETE") {
              next.delete(rowKey(d.schema, d.table, d.key));
            } else if (d.new) {
              next.set(rowKey(d.schema, d.table, d.key), d.new as Row);
            }
          }
          return next;
        });
      },
      presence: presence ? { state: presence.state, onChange: setMembers } : undefined,
    });
    setSubscription(sub);
    return () => {
      sub.close();
      setSubscription(null);
    };
  }, [channel, filterKey, presenceKey]);

  const state = useMemo(() => (rows ? [...rows.values()] : null), [rows]);
  return { status, events, state, members, subscription };
}
