import { execFile, execFileSync, spawn } from 'node:child_process';
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

/** One `## <heading>` section of a results doc as it is now (up to the next section), or ''. */
export function keptSection(file: string, heading: string): string {
  try {
    const text = readFileSync(file, 'utf8');
    const at = text.indexOf(`\n## ${heading}`);
    if (at < 0) return '';
    const end = text.indexOf('\n## ', at + 1);
    return text.slice(at + 1, end < 0 ? undefined : end).trimEnd();
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

/** Waits until a URL answers 200 (a process starting up); the time it took. */
export async function untilOk(url: string, timeoutMs = 60_000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    try {
      if ((await fetch(url)).ok) return performance.now() - t0;
    } catch {
      // starting
    }
    if (performance.now() - t0 > timeoutMs) throw new Error(`${url} did not answer 200 within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** An nginx from a config text, in its own process group (master and workers stop together), up once `probePort` answers. */
export async function runNginx(dir: string, name: string, conf: string, probePort: number): Promise<() => Promise<void>> {
  const file = path.join(dir, `${name}.conf`);
  writeFileSync(file, conf);
  const proc = spawn('nginx', ['-c', file, '-p', dir], { stdio: ['ignore', 'ignore', 'inherit'], detached: true });
  const stop = async () => {
    if (proc.pid !== undefined) process.kill(-proc.pid, 'SIGKILL');
    await waitForExit(proc.pid ?? 0, 5000);
  };
  try {
    await untilOk(`http://127.0.0.1:${probePort}/`, 5000);
  } catch (err) {
    await stop();
    throw err;
  }
  return stop;
}

/** nginx with one worker answering 200 `ok` on `count` loopback ports. */
export async function startNginx(dir: string, count = 1): Promise<{ ports: number[]; stop: () => Promise<void> }> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const conf = `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { ${ports.map((p) => `listen 127.0.0.1:${p};`).join(' ')} location / { return 200 'ok'; } } }\n`;
  return { ports, stop: await runNginx(dir, 'nginx', conf, ports[0] ?? 0) };
}

/** `global` and `defaults` of the hand-written baselines: what an operator would write by hand. */
export const HAND_WRITTEN_HEAD = `global
    maxconn 4000
defaults
    mode http
    balance roundrobin
    option http-keep-alive
    timeout connect 5s
    timeout client 20s
    timeout server 20s
    timeout http-keep-alive 15s
`;

/** What a benchmark reports: printed as it goes, and kept for its results doc. */
export function notebook(): { out: string[]; note: (line: string) => void } {
  const out: string[] = [];
  return {
    out,
    note: (line) => {
      console.log(line);
      out.push(line);
    },
  };
}

/**
 * CPU time (user + system, ms) of a process and its children so far, from /proc: HAProxy's cost
 * per request, which wrk and nginx sharing the same cores disturb far less than requests/s.
 */
export function treeCpuMs(pid: number): number {
  const ticks = (p: number) => {
    try {
      // Fields after the command name; utime and stime are the 14th and 15th of the whole line.
      const f = (readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
      return Number(f[11]) + Number(f[12]);
    } catch {
      return 0;
    }
  };
  let total = ticks(pid);
  try {
    for (const child of readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)) if (child) total += ticks(Number(child));
  } catch {
    // gone
  }
  return total * (1000 / CLOCK_TICKS);
}

/** USER_HZ: 100 on Linux. */
const CLOCK_TICKS = 100;
