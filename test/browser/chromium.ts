/** Debian's Chromium (`apt-get install chromium`), as the browser tests launch it. */

/** Its path; CHROMIUM_PATH overrides. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/**
 * Flags from the machine notes: without the background-networking ones Chromium tries Google's
 * hosts, which this closed network refuses. Playwright gives it a fresh profile.
 */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
