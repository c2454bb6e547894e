import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * One command over a HAProxy UNIX socket (master CLI or admin stats socket), with node:net.
 * HAProxy answers once the client half-closes, so the command is sent with `end()` and the reply
 * read until the server closes. While the master re-executes for a reload its socket refuses
 * connections for a few milliseconds, so connection errors are retried briefly.
 */
export interface SocketCommandOptions {
  readonly timeoutMs?: number;
  /** How long to keep retrying refused/missing-socket connections. */
  readonly retryForMs?: number;
}

const RETRYABLE = new Set(['ECONNREFUSED', 'ENOENT', 'EAGAIN', 'ECONNRESET']);

export async function socketCommand(socketPath: string, command: string, options: SocketCommandOptions = {}): Promise<string> {
  const deadline = Date.now() + (options.retryForMs ?? 2000);
  let delay = 2;
  for (;;) {
    try {
      return await once(socketPath, command, options.timeoutMs ?? 5000);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (!RETRYABLE.has(code) || Date.now() >= deadline) throw err;
      await sleep(delay);
      delay = Math.min(delay * 2, 100);
    }
  }
}

function once(socketPath: string, command: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = net.createConnection(socketPath);
    sock.setTimeout(timeoutMs, () => sock.destroy(Object.assign(new Error(`HAProxy socket ${socketPath} timed out on ${JSON.stringify(command)}`), { code: 'ETIMEDOUT' })));
    sock.on('connect', () => sock.end(`${command}\n`));
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('error', reject);
    sock.on('close', (hadError) => {
      if (!hadError) resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
}

export interface ProcInfo {
  readonly masterPid: number;
  /** Reloads of the master since it started. */
  readonly reloads: number;
  /** Failed reloads since the last successful one (`[failed: N]`). */
  readonly failed: number;
  readonly workers: readonly number[];
  readonly oldWorkers: readonly number[];
}

/** Parses the master CLI's `show proc` table. */
export function parseShowProc(text: string): ProcInfo {
  let section: 'master' | 'workers' | 'old' | 'other' = 'master';
  let masterPid = 0;
  let reloads = 0;
  let failed = 0;
  const workers: number[] = [];
  const oldWorkers: number[] = [];
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '# workers') section = 'workers';
    else if (trimmed === '# old workers') section = 'old';
    else if (trimmed.startsWith('# ')) section = 'other';
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const m = /^(\d+)\s+(\S+)\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?/.exec(trimmed);
    if (!m) continue;
    const pid = Number(m[1]);
    if (m[2] === 'master') {
      masterPid = pid;
      reloads = Number(m[3]);
      failed = Number(m[4] ?? 0);
    } else if (m[2] === 'worker' && section === 'workers') workers.push(pid);
    else if (m[2] === 'worker' && section === 'old') oldWorkers.push(pid);
  }
  return { masterPid, reloads, failed, workers, oldWorkers };
}
