import http from 'node:http';

export interface LoadResult {
  ok: number;
  failed: number;
  errors: string[];
}

/**
 * A bounded load on loopback: `workers` sequential clients for `durationMs` (or until `stop` is
 * aborted, if sooner), keep-alive or `Connection: close`. Every non-200 answer and every socket
 * error counts as failed.
 */
export async function runLoad(url: string, opts: { workers: number; durationMs: number; keepAlive: boolean; stop?: AbortSignal }): Promise<LoadResult> {
  const agent = new http.Agent({ keepAlive: opts.keepAlive, maxSockets: opts.workers });
  const result: LoadResult = { ok: 0, failed: 0, errors: [] };
  const end = Date.now() + opts.durationMs;
  const running = () => Date.now() < end && opts.stop?.aborted !== true;
  const one = () =>
    new Promise<void>((resolve) => {
      const req = http.get(url, { agent, headers: opts.keepAlive ? {} : { Connection: 'close' } }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode === 200) result.ok++;
          else {
            result.failed++;
            if (result.errors.length < 10) result.errors.push(`HTTP ${res.statusCode}`);
          }
          resolve();
        });
      });
      req.on('error', (err) => {
        result.failed++;
        if (result.errors.length < 10) result.errors.push(err.message);
        resolve();
      });
    });
  await Promise.all(
    Array.from({ length: opts.workers }, async () => {
      while (running()) await one();
    }),
  );
  agent.destroy();
  return result;
}
