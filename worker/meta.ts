/**
 * An object's small settings and counters (seq, epoch, name, ...): a key-value table in its SQLite,
 * read once into memory at construction and written through. Both object classes keep theirs here.
 */
export class MetaTable {
  private readonly values = new Map<string, string>();

  constructor(private readonly sql: SqlStorage) {
    sql.exec("create table if not exists meta (key text primary key, value text not null)");
    this.reload();
  }

  /** Reads the table into memory again (after a rolled-back transaction). */
  reload(): void {
    this.values.clear();
    for (const r of this.sql.exec<{ key: string; value: string }>("select key, value from meta")) this.values.set(r.key, r.value);
  }

  get(key: string): string | undefined {
    return this.values.get(key);
  }

  has(key: string): boolean {
    return this.values.has(key);
  }

  /** The value as a number; `fallback` when unset. */
  number(key: string, fallback = 0): number {
    const value = this.values.get(key);
    return value === undefined ? fallback : Number(value);
  }

  set(key: string, value: string | number): void {
    const text = String(value);
    this.values.set(key, text);
    this.sql.exec("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value", key, text);
  }
}
