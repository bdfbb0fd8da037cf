/**
 * The wire protocol: the one module the relay, the Worker and the browser client share.
 * The README's "Wire protocol" section is the prose version of these files.
 */

export * from "./change.ts";
export * from "./filter.ts";
export * from "./frames.ts";
export * from "./json.ts";
export * from "./patterns.ts";
export * from "./signing.ts";
export * from "./validate.ts";
export * from "./wire.ts";
