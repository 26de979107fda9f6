// CPU time of a process's threads by role, read from /proc (Linux): its main
// (JavaScript) thread, AMST's I/O threads (named `amst-io`) and the rest (V8
// and libuv helpers). The benchmarks use it to say which thread a run was
// bound by, not only how fast it went.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

let ticksPerSecond;
function clockTicks() {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** A snapshot: each thread of `pid` now, with its role and CPU seconds so far. */
export function threadCpu(pid) {
  const threads = new Map();
  let tids;
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return threads;  // no /proc, or the process is gone
  }
  for (const tid of tids) {
    let stat;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue;  // the thread ended meanwhile
    }
    // The name is in parentheses and may hold spaces; fields count on from after it.
    const close = stat.lastIndexOf(')');
    const name = stat.slice(stat.indexOf('(') + 1, close);
    const fields = stat.slice(close + 2).split(' ');  // fields[0] is field 3; utime and stime are 14 and 15
    const role = tid === String(pid) ? 'js' : name === 'amst-io' ? 'io' : 'other';
    threads.set(tid, { role, seconds: (Number(fields[11]) + Number(fields[12])) / clockTicks() });
  }
  return threads;
}

/**
 * vCPUs each role kept busy between two snapshots `seconds` apart. A thread
 * that ended in between is left out (what it used is gone from /proc), one
 * that started counts whole.
 */
export function cpuShare(before, after, seconds) {
  const share = { js: 0, io: 0, other: 0 };
  for (const [tid, now] of after) share[now.role] += (now.seconds - (before.get(tid)?.seconds ?? 0)) / seconds;
  return share;
}
