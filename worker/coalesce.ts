/**
 * Calls that arrive while one is under way go together as the next one. A shard of a sharded
 * channel asks its root what each joining socket is owed; after a deploy every socket of the
 * channel joins at once, and one request per socket would reach the root at the rate sockets
 * arrive (past a Durable Object's soft limit of about 1,000 requests a second on a large
 * channel). Coalesced, each shard has at most one request in flight, and the busier the root,
 * the more sockets each request carries.
 */
export class Coalescer<Request, Answer> {
  private queue: { request: Request; resolve: (a: Answer) => void; reject: (e: unknown) => void }[] = [];
  private running = false;
  /** Calls of `send` so far, and the requests they carried. */
  calls = 0;
  requests = 0;

  /**
   * `send` answers its requests in order, one answer each, or throws (every request of that call
   * fails with its error); `max` requests go in one call at most.
   */
  constructor(
    private readonly send: (requests: Request[]) => Promise<Answer[]>,
    private readonly max: number,
  ) {}

  /** `request`'s answer: sent at once if nothing is under way, else with the others that wait. */
  request(request: Request): Promise<Answer> {
    return new Promise<Answer>((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.max);
        this.calls++;
        this.requests += batch.length;
        try {
          const answers = await this.send(batch.map((b) => b.request));
          if (answers.length !== batch.length) throw new Error(`coalesced call answered ${answers.length} of ${batch.length} requests`);
          for (const [i, b] of batch.entries()) b.resolve(answers[i]!);
        } catch (err) {
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
