// Throwaway PostgreSQL and Redis servers for the backend tests: each in a
// temp directory on a free loopback port, password-protected, removed on
// stop. When the server binaries are absent the helpers say why, and the
// tests skip (`.ci/run` installs both from Debian).
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { freePort } from '../src/control/ports.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Service {
  url: string;
  port: number;
  /** Stops the server (data kept) and returns a start function for the same data. */
  pause(): Promise<() => Promise<void>>;
  stop(): Promise<void>;
}

export { freePort };

function accepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * A port where connections are refused, for tests of that: one below the
 * ephemeral range that nothing listens on now. A port freePort() returns
 * can be taken again before it is dialled (by a listener on port 0, or as
 * the local port of an outgoing connection, which then connects to itself);
 * tests only ever listen on port 0, so none takes this one.
 */
export async function refusedPort(): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (!(await accepting(port))) return port;
  }
  throw new Error('no port in 20000-29999 refuses connections');
}

async function waitFor(port: number, child: ChildProcess, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await accepting(port))) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    if (Date.now() - t0 > 30000) throw new Error(`${what} not accepting on ${port} within 30 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));
}

// SIGINT is PostgreSQL's fast shutdown; Redis stops on SIGTERM.
function service(url: string, port: number, dir: string, start: () => Promise<void>, child: () => ChildProcess, signal: NodeJS.Signals): Service {
  const halt = async (): Promise<void> => {
    child().kill(signal);
    await exited(child());
  };
  return {
    url,
    port,
    pause: async () => {
      await halt();
      return start;
    },
    stop: async () => {
      await halt();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function pgBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const v = readdirSync(root).sort((a, b) => Number(b) - Number(a))[0];
  return v && existsSync(join(root, v, 'bin', 'postgres')) ? join(root, v, 'bin') : undefined;
}

/** Why startPostgres() cannot run here, or undefined when it can. */
export function postgresMissing(): string | undefined {
  if (!pgBin()) return 'PostgreSQL server binaries are not installed (apt-get install postgresql)';
  if (process.getuid?.() === 0) {
    try {
      execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    } catch {
      return 'running as root and there is no postgres user to run the server as';
    }
  }
  return undefined;
}

export const PG_PASSWORD = 'test-secret';

export async function startPostgres(): Promise<Service> {
  const bin = pgBin()!;
  const dir = mkdtempSync(join(tmpdir(), 'novacron-pg-'));
  // PostgreSQL refuses to run as root.
  const ids = process.getuid?.() === 0 ? { uid: Number(execFileSync('id', ['-u', 'postgres'])), gid: Number(execFileSync('id', ['-g', 'postgres'])) } : {};
  if (ids.uid !== undefined) chownSync(dir, ids.uid, ids.gid!);
  const pw = join(dir, 'pw');
  writeFileSync(pw, `${PG_PASSWORD}\n`);
  if (ids.uid !== undefined) chownSync(pw, ids.uid, ids.gid!);
  execFileSync(join(bin, 'initdb'), ['-D', join(dir, 'data'), '-U', 'novacron', `--pwfile=${pw}`, '--auth-local=trust', '--auth-host=scram-sha-256', '--no-sync'], { stdio: 'ignore', ...ids });
  const port = await freePort();
  let child: ChildProcess;
  const start = async (): Promise<void> => {
    child = spawn(join(bin, 'postgres'), ['-D', join(dir, 'data'), '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1'], { stdio: 'ignore', ...ids });
    await waitFor(port, child, 'postgres');
    // Accepting connections is not accepting queries ("the database system
    // is starting up"): wait for pg_isready to say so.
    const t0 = Date.now();
    while (spawnSync(join(bin, 'pg_isready'), ['-h', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' }).status !== 0) {
      if (Date.now() - t0 > 30000) throw new Error('postgres not ready within 30 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await start();
  return service(`postgres://novacron:${PG_PASSWORD}@127.0.0.1:${port}/postgres`, port, dir, start, () => child, 'SIGINT');
}

export function redisMissing(): string | undefined {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'redis-server is not installed (apt-get install redis-server)';
  }
}

export const REDIS_PASSWORD = 'cache-secret';

export async function startRedis(): Promise<Service> {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-redis-'));
  const port = await freePort();
  let child: ChildProcess;
  const start = async (): Promise<void> => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--requirepass', REDIS_PASSWORD, '--dir', dir], { stdio: 'ignore' });
    await waitFor(port, child, 'redis-server');
  };
  await start();
  return service(`redis://:${REDIS_PASSWORD}@127.0.0.1:${port}`, port, dir, start, () => child, 'SIGTERM');
}

/** Loopback addresses for an n-member Raft cluster: Raft ports and client ports by member id (1..n). */
export async function clusterAddresses(n: number): Promise<{ peers: Map<number, { host: string; port: number }>; clientAddrs: Map<number, { host: string; port: number }>; clientPorts: number[] }> {
  const raftPorts = await Promise.all(Array.from({ length: n }, () => freePort()));
  const clientPorts = await Promise.all(Array.from({ length: n }, () => freePort()));
  return {
    peers: new Map(raftPorts.map((port, i) => [i + 1, { host: '127.0.0.1', port }])),
    clientAddrs: new Map(clientPorts.map((port, i) => [i + 1, { host: '127.0.0.1', port }])),
    clientPorts,
  };
}

/** Why smallDisk() cannot run here, or undefined. */
export function smallDiskMissing(): string | undefined {
  return process.getuid?.() === 0 ? undefined : 'needs root to mount a small tmpfs';
}

/**
 * A tmpfs of `size` (e.g. '2m') mounted on a fresh directory, for full-disk
 * tests; unmounted and removed by the returned function. Undefined when the
 * mount fails here.
 */
export function smallDisk(size: string): { dir: string; remove(): void } | undefined {
  const dir = mkdtempSync(join(tmpdir(), 'novacron-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return undefined;
  }
  return {
    dir,
    remove: () => {
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
