/**
 * The pieces of the options table (relay/options.ts): what a row holds, how an option's text
 * becomes its value, and the rules shared by several options.
 */
import { type HttpListen, type NotifyRoute, parseHttp, parseNotifyRoutes, parsePartition, RelayConfigError, type ResolvedRelayOptions } from "./config.ts";
import type { Partition } from "./outbox.ts";

/** How an option's text (its flag's, else its variable's) becomes its value. */
export interface ValueKind<V> {
  /** A switch takes no value on the command line; its variable turns it on with 1 or true. */
  readonly switch?: true;
  /** An empty text is a value to parse, not "unset" (the default). */
  readonly emptyIsValue?: true;
  /** The value of `text`; `label` (`--flag (VARIABLE)`) names the option in an error. */
  parse(text: string, label: string): V;
  /** The value as --help and the README write it. */
  show(value: V): string;
}

/** How an option is named in messages. */
export interface OptionNames {
  /** `--flag` */
  flag: string;
  /** `VARIABLE` */
  env: string;
}

/** A rule a resolved value must keep: throws {@link RelayConfigError} saying what to change. */
export type Rule<V> = (value: V, options: ResolvedRelayOptions, names: OptionNames) => void;

/** One option: a row of the table. */
export type OptionSpec<V> = {
  /** The flag, without its dashes. */
  readonly flag: string;
  /** The environment variable read when the flag is absent. */
  readonly env: string;
  /** Its line in --help (" (required)" or " [default: ...]" is added). */
  readonly help: string;
  readonly kind: ValueKind<V>;
  /** Checked by resolveRelayOptions, in the table's order. */
  readonly check?: Rule<V>;
} & (
  | { readonly default: V; readonly required?: undefined }
  /** Required: no default, and `required` says how to set it. */
  | { readonly required: string; readonly default?: undefined }
);

/** Text as given. */
export const text: ValueKind<string> = { parse: (t) => t, show: (v) => v };

/** One of the words `T`: taken as given here, refused by the option's rule (with its message) when it is not one of them. */
export const word = <T extends string>(): ValueKind<T> => ({ parse: (t) => t as T, show: (v) => v });

export const wholeNumber: ValueKind<number> = {
  parse(t, label) {
    if (!/^\d+$/.test(t.trim())) throw new RelayConfigError(`${label} must be a whole number, got ${JSON.stringify(t)}`);
    return Number(t);
  },
  show: String,
};

export const notifyRoutes: ValueKind<NotifyRoute[]> = {
  parse: parseNotifyRoutes,
  show: (routes) => (routes.length === 0 ? "none" : routes.map((r) => (r.pgChannel === r.channel ? r.channel : `${r.pgChannel}=${r.channel}`)).join(",")),
};

export const partition: ValueKind<Partition | null> = { parse: parsePartition, show: (p) => (p ? `${p.index}/${p.count}` : "none") };

export const listen: ValueKind<HttpListen | null> = {
  // An empty --http is a mistake to report, not a request for the default.
  emptyIsValue: true,
  parse: parseHttp,
  show: (h) => (h ? `${h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}` : "off"),
};

export const onOff: ValueKind<boolean> = { switch: true, parse: (t) => t === "1" || t === "true", show: (v) => (v ? "on" : "off") };

/** Refuses `value` unless it is an integer from `min` to `max`; `name` names it in the message. */
export function intIn(name: string, value: number, min: number, max: number): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new RelayConfigError(`${name} must be an integer from ${min} to ${max}, got ${value}`);
  }
}

/** An integer from `min` (or what `min` says of the other options) to `max`. */
export const between =
  (min: number | ((o: ResolvedRelayOptions) => number), max: number): Rule<number> =>
  (value, o, names) =>
    intIn(names.flag, value, typeof min === "number" ? min : min(o), max);

/** 0 (off), or a value that keeps `rule`. */
export const zeroOr =
  (rule: Rule<number>): Rule<number> =>
  (value, o, names) =>
    value === 0 ? undefined : rule(value, o, names);

/** `a, b or c` */
export const orList = (items: readonly string[]): string => `${items.slice(0, -1).join(", ")} or ${items.at(-1)}`;
