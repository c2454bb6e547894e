import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';

/** What the benchmarks share: percentiles, the machine line, Debian installs, kept notes. */

export function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
}

/** Cores, CPU, memory, Node and HAProxy versions, then what the caller adds. */
export function machine(extra: string): string {
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  const haproxy = execFileSync('haproxy', ['-v'], { encoding: 'utf8' }).split('\n')[0] ?? '';
  return `${os.cpus().length} cores (${cpu}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM, ${os.type()} ${os.release()}, Node ${process.version}, ${haproxy.replace(/ - https.*/, '')}, ${extra}`;
}

/** Installs a Debian package when its binary is missing (bench-only tools: wrk, nginx). */
export function ensureInstalled(bin: string, pkg: string): void {
  try {
    execFileSync('bash', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
  } catch {
    console.log(`installing ${pkg} from Debian (apt-get install ${pkg})`);
    execFileSync('bash', ['-c', `apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q ${pkg} >/dev/null`], { stdio: 'inherit' });
  }
}

/** The hand-written notes of a results doc (everything from "## Notes"), kept across runs. */
export function keptNotes(file: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    const at = text.indexOf('\n## Notes');
    return at >= 0 ? text.slice(at) : '';
  } catch {
    return '';
  }
}

export interface WrkResult {
  readonly requests: number;
  readonly rps: number;
  /** Socket errors: connect, read, write and timeouts together. */
  readonly errors: number;
  readonly non2xx: number;
}

/** One wrk run, parsed. */
export async function wrk(url: string, o: { seconds: number; connections?: number; threads?: number; host?: string; close?: boolean }): Promise<WrkResult> {
  const args = [`-t${o.threads ?? 1}`, `-c${o.connections ?? 32}`, `-d${o.seconds}s`, ...(o.host ? ['-H', `Host: ${o.host}`] : []), ...(o.close ? ['-H', 'Connection: close'] : []), url];
  const { stdout } = await promisify(execFile)('wrk', args, { timeout: (o.seconds + 30) * 1000 });
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  return {
    requests: Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0),
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0),
    errors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0),
  };
}

/** nginx with one worker answering 200 `ok` on `count` loopback ports, in its own process group. */
export async function startNginx(dir: string, count = 1): Promise<{ ports: number[]; proc: ChildProcess; stop: () => Promise<void> }> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const conf = path.join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { ${ports.map((p) => `listen 127.0.0.1:${p};`).join(' ')} location / { return 200 'ok'; } } }\n`,
  );
  const proc = spawn('nginx', ['-c', conf, '-p', dir], { stdio: ['ignore', 'ignore', 'inherit'], detached: true });
  const stop = async () => {
    if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
    await waitForExit(proc.pid ?? 0, 5000);
  };
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`http://127.0.0.1:${ports[0]}/`)).ok) return { ports, proc, stop };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await stop();
  throw new Error('nginx did not start');
}
