import { execFile } from 'node:child_process';
import { ConfigRejectedError, HaproxyUnavailableError } from '../errors.js';

/** `haproxy -c -f <file>...`: HAProxy's own verdict on a config before it may go live. */
export function validateConfig(haproxyBin: string, files: readonly string[], timeoutMs = 60_000): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(haproxyBin, ['-c', ...files.flatMap((f) => ['-f', f])], { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (!err) return resolve();
      const e = err as NodeJS.ErrnoException & { code?: string | number };
      if (typeof e.code === 'string') return reject(new HaproxyUnavailableError(`cannot run ${haproxyBin}: ${e.message}`, err));
      // Killed (its timeout, or a signal): no verdict on the config, so not "refused".
      const killed = err as { killed?: boolean; signal?: string | null };
      if (killed.killed || killed.signal) return reject(new HaproxyUnavailableError(`${haproxyBin} -c did not finish (${killed.signal ?? 'killed'} after at most ${timeoutMs} ms)`, err));
      const output = `${stdout}${stderr}`
        .split('\n')
        .filter((l) => /ALERT|WARNING|error/i.test(l))
        .join('\n');
      reject(new ConfigRejectedError(output || `${stdout}${stderr}`, false));
    });
  });
}

/**
 * Whether this HAProxy was built with the Prometheus exporter (`USE_PROMEX`; Debian's 2.6 is):
 * `haproxy -vv` lists it under "Available services". Asked at start-up when PROMETHEUS_PORT is set,
 * so a build without it stops start-up naming the variable instead of failing `haproxy -c`.
 */
export function hasPrometheusExporter(haproxyBin: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(haproxyBin, ['-vv'], { timeout: 10_000 }, (err, stdout) => resolve(!err && /Available services\s*:[^\n]*\bprometheus-exporter\b/.test(stdout)));
  });
}
