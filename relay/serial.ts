/** One connection's queries, one after another: see {@link SerialClient}. */
import type pg from "pg";

/** What the relay's SQL helpers need of a connection: a pg Client, or a {@link SerialClient}. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/**
 * A pg Client whose queries run in the order they were asked for, each once the one before it
 * has settled. Several loops share each connection of a relay session (the outbox loop reads its
 * next page while the doorbell update runs, and with --source wal the wal loop queries too; the
 * prune loop and the metrics share the listener). node-postgres 8 queues a query sent while
 * others wait, but deprecates it (a warning when a wal relay started) and version 9 removes it;
 * this keeps the same order without relying on it.
 */
export class SerialClient implements Queryable {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(readonly client: pg.Client) {}

  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>> {
    const result = this.tail.then(() => this.client.query<R>(text, values));
    // A failed query does not stop the ones behind it: each sees its own result (a lost
    // connection fails them all, as pg's own queue would).
    this.tail = result.catch(() => undefined);
    return result;
  }
}
