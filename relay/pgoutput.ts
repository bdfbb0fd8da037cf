/**
 * The pgoutput plugin's messages, decoded: what the walsender sends inside each XLogData when the
 * relay streams a slot with `proto_version '1', publication_names ..., messages 'true'`. The
 * formats are Postgres's "Logical Replication Message Formats" (src/backend/replication/logical/
 * proto.c writes them). Column values stay in the text form the walsender's output functions made;
 * relay/pgjson.ts turns them into the JSON the trigger modes write.
 *
 * Protocol version 1 is asked for, without `streaming`: a large transaction then reaches the
 * relay only after it committed (Postgres spills it to disk meanwhile, past
 * logical_decoding_work_mem), so nothing the relay sends can later abort, and the relay's memory
 * stays bounded by pausing the socket. Streaming (version 2) would hand over in-progress
 * transactions that the relay would have to hold itself until their commit.
 */

/** A column of a relation, as its Relation message describes it. */
export interface RelationColumn {
  name: string;
  /** pg_type oid. */
  type: number;
  typmod: number;
  /** Part of the replica identity (the primary key, by default). */
  key: boolean;
}

/** A Relation message: the table's current shape, sent before the first change of it in a session and after each DDL. */
export interface Relation {
  oid: number;
  schema: string;
  table: string;
  /** pg_class.relreplident: `d` default (the primary key), `f` full, `i` an index, `n` nothing. */
  replicaIdentity: "d" | "f" | "i" | "n";
  columns: RelationColumn[];
}

/** One column's value in a tuple: its text, NULL, or unchanged (a TOASTed value an UPDATE did not touch). */
export type TupleValue = string | null | typeof UNCHANGED;

/** Marks a column whose value is not in the WAL: an unchanged TOASTed value of an UPDATE. */
export const UNCHANGED: unique symbol = Symbol("unchanged toasted value");

/** A decoded pgoutput message. */
export type PgOutputMessage =
  | { tag: "begin"; finalLsn: bigint; commitTime: number; xid: number }
  | { tag: "commit"; lsn: bigint; endLsn: bigint; commitTime: number }
  | { tag: "message"; transactional: boolean; lsn: bigint; prefix: string; content: Buffer }
  | { tag: "relation"; relation: Relation }
  | { tag: "type"; oid: number; schema: string; name: string }
  | { tag: "insert"; relation: number; new: TupleValue[] }
  | { tag: "update"; relation: number; old: TupleValue[] | null; oldIsKey: boolean; new: TupleValue[] }
  | { tag: "delete"; relation: number; old: TupleValue[]; oldIsKey: boolean }
  | { tag: "truncate"; relations: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: "origin" }
  | { tag: "unknown"; byte: number };

/** Postgres epoch (2000-01-01) in Unix milliseconds: replication timestamps count from it. */
export const PG_EPOCH_MS = 946_684_800_000;

/** A cursor over one message's bytes. */
class Reader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}
  u8(): number {
    return this.buf.readUInt8(this.pos++);
  }
  i16(): number {
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  i32(): number {
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u32(): number {
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }
  /** Microseconds since the Postgres epoch, as Unix milliseconds. */
  time(): number {
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return Number(v / 1000n) + PG_EPOCH_MS;
  }
  /** A NUL-terminated string. */
  cstring(): string {
    const end = this.buf.indexOf(0, this.pos);
    const s = this.buf.toString("utf8", this.pos, end);
    this.pos = end + 1;
    return s;
  }
  bytes(n: number): Buffer {
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  tuple(): TupleValue[] {
    const n = this.i16();
    const values: TupleValue[] = new Array<TupleValue>(n);
    for (let i = 0; i < n; i++) {
      const kind = this.u8();
      if (kind === 0x6e /* n */) values[i] = null;
      else if (kind === 0x75 /* u */) values[i] = UNCHANGED;
      else if (kind === 0x74 /* t */ || kind === 0x62 /* b */) values[i] = this.bytes(this.u32()).toString("utf8");
      else throw new Error(`pgoutput: unknown tuple value kind ${kind}`);
    }
    return values;
  }
}

/** Decodes one pgoutput message (the body of an XLogData). */
export function decodePgOutput(body: Buffer): PgOutputMessage {
  const r = new Reader(body);
  const byte = r.u8();
  switch (byte) {
    case 0x42 /* B */:
      {
        const finalLsn = r.u64();
        const commitTime = r.time();
        return { tag: "begin", finalLsn, commitTime, xid: r.u32() };
      }
    case 0x43 /* C */:
      {
        r.u8(); // flags, unused
        const lsn = r.u64();
        const endLsn = r.u64();
        return { tag: "commit", lsn, endLsn, commitTime: r.time() };
      }
    case 0x4d /* M */:
      {
        const transactional = (r.u8() & 1) === 1;
        const lsn = r.u64();
        const prefix = r.cstring();
        return { tag: "message", transactional, lsn, prefix, content: r.bytes(r.u32()) };
      }
    case 0x52 /* R */:
      {
        const oid = r.u32();
        const schema = r.cstring();
        const table = r.cstring();
        const replicaIdentity = String.fromCharCode(r.u8()) as Relation["replicaIdentity"];
        const n = r.i16();
        const columns: RelationColumn[] = [];
        for (let i = 0; i < n; i++) {
          const flags = r.u8();
          const name = r.cstring();
          const type = r.u32();
          columns.push({ name, type, typmod: r.i32(), key: (flags & 1) === 1 });
        }
        return { tag: "relation", relation: { oid, schema, table, replicaIdentity, columns } };
      }
    case 0x59 /* Y */:
      {
        const oid = r.u32();
        const schema = r.cstring();
        return { tag: "type", oid, schema, name: r.cstring() };
      }
    case 0x49 /* I */:
      {
        const relation = r.u32();
        r.u8(); // 'N'
        return { tag: "insert", relation, new: r.tuple() };
      }
    case 0x55 /* U */:
      {
        const relation = r.u32();
        let kind = r.u8();
        let old: TupleValue[] | null = null;
        let oldIsKey = false;
        if (kind === 0x4b /* K */ || kind === 0x4f /* O */) {
          oldIsKey = kind === 0x4b;
          old = r.tuple();
          kind = r.u8();
        }
        if (kind !== 0x4e /* N */) throw new Error(`pgoutput: update without a new tuple (${kind})`);
        return { tag: "update", relation, old, oldIsKey, new: r.tuple() };
      }
    case 0x44 /* D */:
      {
        const relation = r.u32();
        const kind = r.u8();
        return { tag: "delete", relation, oldIsKey: kind === 0x4b, old: r.tuple() };
      }
    case 0x54 /* T */:
      {
        const n = r.u32();
        const options = r.u8();
        const relations: number[] = [];
        for (let i = 0; i < n; i++) relations.push(r.u32());
        return { tag: "truncate", relations, cascade: (options & 1) === 1, restartIdentity: (options & 2) === 2 };
      }
    case 0x4f /* O */:
      return { tag: "origin" };
    default:
      return { tag: "unknown", byte };
  }
}
