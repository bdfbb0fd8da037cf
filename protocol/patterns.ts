/** Channel patterns: in token claims, PUBLIC_CHANNELS and CONFLATE. */

const CHANNEL_CHAR = "[A-Za-z0-9_.:@-]";

/**
 * True when `channel` matches `pattern`: `*` stands for any run of channel characters, and
 * `{claim}` for the token's claim of that name (a string or number without `:` or `*`; a pattern
 * naming a claim the token lacks matches nothing). Examples: `todos`, `tenant:42`, `user:{sub}`,
 * `tenant:{tenant_id}:*`, `public:*`.
 */
export function channelMatches(pattern: string, channel: string, claims: Record<string, unknown> | null): boolean {
  let regex = "";
  for (const part of pattern.split(/(\{[^{}]+\}|\*)/)) {
    if (part === "") continue;
    if (part === "*") {
      regex += `${CHANNEL_CHAR}*`;
    } else if (part.startsWith("{") && part.endsWith("}")) {
      const value = claims?.[part.slice(1, -1)];
      const text = typeof value === "number" ? String(value) : value;
      if (typeof text !== "string" || !/^[A-Za-z0-9_.@-]{1,128}$/.test(text)) return false;
      regex += escapeRegex(text);
    } else {
      regex += escapeRegex(part);
    }
  }
  return new RegExp(`^${regex}$`).test(channel);
}

function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&");
}
