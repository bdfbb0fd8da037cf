/**
 * CPU time of the workerd processes this test process started (its descendants), from /proc:
 * the Worker and its Durable Objects, without the other processes of a shared machine (another
 * test run's workerd included). Linux only; elsewhere the snapshots are empty.
 */
import { readdirSync, readFileSync } from "node:fs";
import { roleOf } from "../../bench/lib/cpu.ts";

const TICK_MS = 10; // USER_HZ is 100 on Linux

/** CPU ms so far of each workerd process under this one, by pid. */
export type CpuByPid = Map<number, number>;

export function workerdCpu(): CpuByPid {
  const stats = new Map<number, { ppid: number; ms: number }>();
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p));
  } catch {
    return new Map();
  }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // f[1] is the parent's pid; f[11] + f[12] user and system time (the process's own).
      stats.set(Number(pid), { ppid: Number(f[1]), ms: (Number(f[11]) + Number(f[12])) * TICK_MS });
    } catch {
      // the process ended between the listing and the read
    }
  }
  const children = new Map<number, number[]>();
  for (const [pid, { ppid }] of stats) children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  const out: CpuByPid = new Map();
  const queue = [...(children.get(process.pid) ?? [])];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    queue.push(...(children.get(pid) ?? []));
    try {
      if (roleOf(pid, readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ")) === "workerd") out.set(pid, stats.get(pid)!.ms);
    } catch {
      // ended meanwhile
    }
  }
  return out;
}

/** CPU ms the processes of `after` used since `before` (a process absent from `before` counts from its start). */
export function cpuSince(before: CpuByPid, after: CpuByPid): number {
  let ms = 0;
  for (const [pid, value] of after) ms += value - (before.get(pid) ?? 0);
  return ms;
}
