import { cloudflareTest } from "@cloudflare/vitest-plugin";
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    projects: [
      {
        // Worker and Durable Object tests, inside workerd.
        plugins: [
          cloudflareTest({
            wrangler: { configPath: "./wrangler.toml" },
            miniflare: {
              bindings: {
                INGEST_SECRET: "test-secret-0123456789abcdef",
                INGEST_SECRET_PREVIOUS: "previous-secret-0123456789abcdef",
                JWT_SECRET: "jwt-secret-for-tests-0123456789abcdef",
                PUBLIC_CHANNELS: "public:*",
                ALLOWED_ORIGINS: "https://app.example",
                REPLAY_MAX_EVENTS: "50",
                MAX_SOCKETS_PER_CHANNEL: "20",
                STATE_MAX_ROWS: "20",
                CONFLATE: "conf:*=50",
                SHARDS: "live:*=4",
              },
            },
          }),
        ],
        test: { name: "worker", include: ["test/worker/**/*.test.ts", "test/faults/**/*.worker.test.ts"] },
      },
      {
        // Units that need neither Postgres nor workerd (protocol/, the benchmark's accounting): plain Node.
        test: { name: "unit", include: ["test/protocol/**/*.test.ts", "test/client/**/*.test.ts", "test/bench/**/*.test.ts", "test/relay/config.test.ts"] },
      },
      {
        // Relay, end-to-end and browser tests, in Node against a real Postgres.
        test: {
          name: "node",
          include: ["test/relay/**/*.test.ts", "test/e2e/**/*.test.ts", "test/faults/**/*.test.ts", "test/browser/**/*.test.ts", "test/package/**/*.test.ts"],
          exclude: ["test/faults/**/*.worker.test.ts", "test/relay/config.test.ts"],
          globalSetup: ["test/support/global-setup.ts"],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          // Two cores: one Postgres, one workerd per file, files in parallel would starve each other.
          fileParallelism: false,
        },
      },
    ],
  },
});
