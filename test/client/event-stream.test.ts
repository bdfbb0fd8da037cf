/** client/event-stream.ts: the channel's HTTP URL, as partysocket builds its WebSocket URL. */
import { describe, expect, it } from "vitest";
import { channelHttpUrl } from "../../client/event-stream.ts";

describe("channelHttpUrl", () => {
  it("uses http for local and private hosts and https elsewhere, as partysocket uses ws and wss", () => {
    expect(channelHttpUrl("localhost:8787", "todos", {})).toBe("http://localhost:8787/parties/main/todos?");
    expect(channelHttpUrl("127.0.0.1:9000", "a", {})).toMatch(/^http:\/\/127\.0\.0\.1:9000\//);
    expect(channelHttpUrl("10.1.2.3:80", "a", {})).toMatch(/^http:/);
    expect(channelHttpUrl("172.20.0.1:80", "a", {})).toMatch(/^http:/);
    expect(channelHttpUrl("172.40.0.1:80", "a", {})).toMatch(/^https:/);
    expect(channelHttpUrl("realtime.example.com", "a", {})).toMatch(/^https:\/\/realtime\.example\.com\/parties\/main\/a\?/);
    expect(channelHttpUrl("https://realtime.example.com/", "a", {})).toMatch(/^https:\/\/realtime\.example\.com\/parties\/main\/a\?/);
  });

  it("carries the join's query, leaving out what is not set", () => {
    const url = new URL(channelHttpUrl("realtime.example.com", "tenant:42", { since: "7", epoch: "e-1", token: "t.o.k", filter: null }));
    expect(url.pathname).toBe("/parties/main/tenant:42");
    expect(Object.fromEntries(url.searchParams)).toEqual({ since: "7", epoch: "e-1", token: "t.o.k" });
  });
});
