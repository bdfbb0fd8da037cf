/** Writers: N connections inserting single-row transactions, flat out or at a paced rate. */
import pg from "pg";

/** Options of {@link write}. */
export interface WriteOptions {
  databaseUrl: string;
  table: "bench_plain" | "bench_ours" | "bench_seeds";
  writers: number;
  seconds: number;
  channels: string[];
  /** Total rows per second across writers; absent: as fast as they can. */
  ratePerSecond?: number;
  /** Bytes of padding per row (payload size). Default 100. */
  padBytes?: number;
}

/** What was written. */
export interface WriteResult {
  rows: number;
  seconds: number;
  perChannel: Record<string, number>;
  firstSendAt: number;
  lastCommitAt: number;
}

const now = () => performance.timeOrigin + performance.now();

/** Inserts rows for `seconds`; each row carries its writer, its sequence and its send time (t0). */
export async function write(options: WriteOptions): Promise<WriteResult> {
  const pad = "x".repeat(options.padBytes ?? 100);
  const clients = await Promise.all(
    Array.from({ length: options.writers }, async () => {
      const c = new pg.Client({ connectionString: options.databaseUrl });
      await c.connect();
      return c;
    }),
  );
  const perChannel: Record<string, number> = Object.fromEntries(options.channels.map((c) => [c, 0]));
  const sql = `insert into ${options.table} (channel, w, n, t0, pad) values ($1, $2, $3, $4, $5)`;
  let rows = 0;
  let lastCommitAt = 0;
  const started = now();
  const deadline = started + options.seconds * 1000;
  const perWriterRate = options.ratePerSecond ? options.ratePerSecond / options.writers : null;
  try {
    await Promise.all(
      clients.map(async (c, w) => {
        for (let n = 0; ; n++) {
          const t = now();
          if (t >= deadline) break;
          if (perWriterRate) {
            // Paced: row n is due at started + n / rate; wait for it (a schedule, not a sleep in a test).
            const due = started + (n / perWriterRate) * 1000;
            if (due > t) await new Promise((r) => setTimeout(r, due - t));
            if (now() >= deadline) break;
          }
          const channel = options.channels[(w + n) % options.channels.length]!;
          await c.query(sql, [channel, w, n, now(), pad]);
          lastCommitAt = now();
          perChannel[channel]!++;
          rows++;
        }
      }),
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
  return { rows, seconds: (lastCommitAt - started) / 1000, perChannel, firstSendAt: started, lastCommitAt };
}

/** Options of {@link oltp}. */
export interface OltpOptions {
  databaseUrl: string;
  /** Which set of the scenario's tables (bench/lib/stack.ts, createOltpTables). */
  set: "plain" | "ours" | "seeds";
  writers: number;
  seconds: number;
  shape: { branches: number; tellers: number; accounts: number };
}

/**
 * The multi-statement scenario: `writers` connections each run transactions of three updates, one
 * row of each of the three tables (an account, a teller, a branch, as pgbench's TPC-B does, without
 * its history insert), for `seconds`; returns the transactions per second.
 */
export async function oltp(options: OltpOptions): Promise<number> {
  const clients = await Promise.all(
    Array.from({ length: options.writers }, async () => {
      const c = new pg.Client({ connectionString: options.databaseUrl });
      await c.connect();
      return c;
    }),
  );
  const { set, shape } = options;
  const statements = [
    `update ${set}_accounts set balance = balance + $2 where id = $1`,
    `update ${set}_tellers set balance = balance + $2 where id = $1`,
    `update ${set}_branches set balance = balance + $2 where id = $1`,
  ];
  const random = (n: number) => 1 + Math.floor(Math.random() * n);
  let transactions = 0;
  const started = now();
  const deadline = started + options.seconds * 1000;
  try {
    await Promise.all(
      clients.map(async (c) => {
        while (now() < deadline) {
          const delta = random(10_000) - 5000;
          await c.query("begin");
          await c.query({ name: `${set}-a`, text: statements[0]!, values: [random(shape.accounts), delta] });
          await c.query({ name: `${set}-t`, text: statements[1]!, values: [random(shape.tellers), delta] });
          await c.query({ name: `${set}-b`, text: statements[2]!, values: [random(shape.branches), delta] });
          await c.query("commit");
          transactions++;
        }
      }),
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
  return transactions / ((now() - started) / 1000);
}
