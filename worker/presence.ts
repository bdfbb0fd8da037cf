/**
 * The presence members a channel's root keeps for its shards' sockets (its own sockets' members are
 * in their attachments). In SQLite, so a hibernated root still lists them.
 */
import type { PresenceMember } from "../protocol/index.ts";

export class ShardMembers {
  constructor(private readonly sql: SqlStorage) {
    sql.exec("create table if not exists shard_members (id text primary key, shard integer not null, member text not null)");
  }

  /** A member on shard `shard` joined (or joined again). */
  join(m: PresenceMember, shard: number): void {
    this.sql.exec(
      "insert into shard_members (id, shard, member) values (?, ?, ?) on conflict (id) do update set member = excluded.member",
      m.id,
      shard,
      JSON.stringify(m),
    );
  }

  /** A member changed its state. */
  update(m: PresenceMember): void {
    this.sql.exec("update shard_members set member = ? where id = ?", JSON.stringify(m), m.id);
  }

  leave(m: PresenceMember): void {
    this.sql.exec("delete from shard_members where id = ?", m.id);
  }

  /** Every shard's members, in the order they joined. */
  list(): PresenceMember[] {
    return this.sql
      .exec<{ member: string }>("select member from shard_members order by rowid")
      .toArray()
      .map((r) => JSON.parse(r.member) as PresenceMember);
  }
}
