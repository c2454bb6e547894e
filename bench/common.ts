import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

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
