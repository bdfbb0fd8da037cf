/**
 * Where the CPU goes: the CPU time of this machine's processes, by their part in the benchmark,
 * read from /proc (Linux; elsewhere it reads nothing and the tables say so). Everything runs on
 * the same cores, so a part's CPU per event is what it takes from the others.
 */
import { readdirSync, readFileSync } from "node:fs";

/** The parts, in the order tables list them. */
export const ROLES = ["Postgres", "workerd", "relay", "baseline server", "writers (harness)", "subscribers (harness)", "wrangler (Node)"] as const;
export type Role = (typeof ROLES)[number];

const TICK_MS = 10; // USER_HZ is 100 on Linux

/** The part a process plays, from its command line; null for anything else on the machine. */
export function roleOf(pid: number, cmdline: string): Role | null {
  if (pid === process.pid) return "writers (harness)";
  // Postgres backends retitle themselves "postgres: user db host ..."; the postmaster keeps its path.
  if (/^postgres: |\/bin\/postgres /.test(cmdline)) return "Postgres";
  if (/\/workerd /.test(cmdline)) return "workerd";
  if (/dist\/cli\.js relay/.test(cmdline)) return "relay";
  if (/bench\/baseline\/server\.ts/.test(cmdline)) return "baseline server";
  if (/bench\/lib\/receiver\.ts/.test(cmdline)) return "subscribers (harness)";
  if (/bench\/lib\/worker-process\.ts/.test(cmdline)) return "wrangler (Node)";
  return null;
}

/** CPU milliseconds so far, per process (`pid role`). */
export type CpuSnapshot = Map<string, number>;

export function cpuSnapshot(): CpuSnapshot {
  const snapshot: CpuSnapshot = new Map();
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return snapshot;
  }
  for (const pid of pids) {
    try {
      const role = roleOf(Number(pid), readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "));
      if (!role) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime + stime; for Postgres also the children it has reaped (cutime + cstime): each
      // writer's backend exits when its connection closes, and its time then counts in the postmaster.
      const ticks = Number(f[11]) + Number(f[12]) + (role === "Postgres" ? Number(f[13]) + Number(f[14]) : 0);
      snapshot.set(`${pid} ${role}`, ticks * TICK_MS);
    } catch {
      // the process ended between the listing and the read
    }
  }
  return snapshot;
}

/** Microseconds of CPU per event for each part between two snapshots (parts that used none left out). */
export function cpuPerEvent(before: CpuSnapshot, after: CpuSnapshot, events: number): Partial<Record<Role, number>> {
  const ms = new Map<Role, number>();
  for (const [key, value] of after) {
    const role = key.slice(key.indexOf(" ") + 1) as Role;
    ms.set(role, (ms.get(role) ?? 0) + value - (before.get(key) ?? 0));
  }
  const out: Partial<Record<Role, number>> = {};
  for (const role of ROLES) {
    const v = ms.get(role) ?? 0;
    if (v > 0 && events > 0) out[role] = (v * 1000) / events;
  }
  return out;
}
