/**
 * React: `useChannel(channel, options)` for React apps (Next.js and the
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
import { applyChange, type RowRef, type RowState, stateFromSnapshot } from "../protocol/index.ts";
import { type ChannelEvent, type PresenceMember, type RowFilter, type Status, type SubscribeOptions, type Subscription, subscribe } from "./index.ts";

/** Options of {@link useChannel}: those of `subscribe()` but the channel and callbacks, plus `keep`. */
export interface UseChannelOptions extends Omit<SubscribeOptions, "channel" | "onEvents" | "onSnapshot" | "onStatus" | "presence" | "snapshot"> {
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
  /**
   * The channel's current rows (its retained state: `watch(..., retain => true)`), kept current by
   * the change events: `[]` while it has none, null until the first snapshot arrives and when the
   * channel's state outgrew its limits (`overflow`: load rows from your app). Every entry is a
   * whole row: a row too large to carry is in `oversized` instead.
   */
  state: Row[] | null;
  /** Rows that exist but were too large to carry (`row_too_large` or `event_too_large`): their table and key, to fetch from your app. */
  oversized: RowRef[];
  /** Presence members, when joined with `presence`. */
  members: PresenceMember[];
  /** The live subscription (for broadcast, setPresence), once mounted. */
  subscription: Subscription | null;
}

/** Subscribes to `channel` while the component is mounted. */
export function useChannel<Row = Record<string, unknown>>(channel: string, options: UseChannelOptions): ChannelView<Row> {
  const [status, setStatus] = useState<Status>("connecting");
  const [events, setEvents] = useState<ChannelEvent[]>([]);
  const [rows, setRows] = useState<RowState<Row> | null>(null);
  const [members, setMembers] = useState<PresenceMember[]>([]);
  const [subscription, setSubscription] = useState<Subscription | null>(null);
  // Options read at (re)subscribe time; a new object each render must not resubscribe.
  const latest = useRef(options);
  latest.current = options;
  const filterKey = JSON.stringify(options.filter ?? null, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v));
  const presenceKey = options.presence ? "1" : "";

  // biome-ignore lint/correctness/useExhaustiveDependencies: options are read from `latest`; a new filter or presence (by value) resubscribes
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
      // The snapshot is asked for even before the channel retains a row: an empty state is [], not "loading".
      snapshot: true,
      onSnapshot: ({ rows: snapshot, overflow }) => setRows(overflow ? null : stateFromSnapshot<Row>(snapshot)),
      onEvents: (batch) => {
        setEvents((prev) => [...prev, ...batch].slice(-keep));
        setRows((prev) => {
          if (prev === null) return prev;
          const next: RowState<Row> = { rows: new Map(prev.rows), oversized: new Map(prev.oversized) };
          let changed = false;
          for (const e of batch) changed = applyChange(next, e.data) || changed;
          return changed ? next : prev;
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

  const state = useMemo(() => (rows ? [...rows.rows.values()] : null), [rows]);
  const oversized = useMemo(() => (rows ? [...rows.oversized.values()] : []), [rows]);
  return { status, events, state, oversized, members, subscription };
}
