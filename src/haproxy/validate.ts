import { execFile } from 'node:child_process';
import { ConfigRejectedError, HaproxyUnavailableError } from '../errors.js';

/**
 * Why the kernel refused to execute HAProxy, for the operator. EPERM at exec: the binary carries
 * file capabilities (the container image's HAProxy has cap_net_bind_service, for ports 80 and
 * 443) that the process may not have, as under `--cap-drop ALL`.
 */
export function execRefusal(haproxyBin: string, err: NodeJS.ErrnoException): string | undefined {
  if (err.code !== 'EPERM') return undefined;
  return `cannot execute ${haproxyBin} (EPERM): a binary with file capabilities, like the container image's HAProxy (cap_net_bind_service), cannot run without that capability: give the container NET_BIND_SERVICE (--cap-add NET_BIND_SERVICE)`;
}

/** `haproxy -c -f <file>...`: HAProxy's own verdict on a config before it may go live. */
export function validateConfig(haproxyBin: string, files: readonly string[], timeoutMs = 60_000): Promise<void> {
  const cannotRun = (err: NodeJS.ErrnoException) => new HaproxyUnavailableError(execRefusal(haproxyBin, err) ?? `cannot run ${haproxyBin}: ${err.message}`, err);
  return new Promise((resolve, reject) => {
    try {
      execFile(haproxyBin, ['-c', ...files.flatMap((f) => ['-f', f])], { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
        if (!err) return resolve();
        if (typeof err.code === 'string') return reject(cannotRun(err as NodeJS.ErrnoException));
        // Killed (its timeout, or a signal): no verdict on the config, so not "refused".
        const killed = err as { killed?: boolean; signal?: string | null };
        if (killed.killed || killed.signal) return reject(new HaproxyUnavailableError(`${haproxyBin} -c did not finish (${killed.signal ?? 'killed'} after at most ${timeoutMs} ms)`, err));
        const output = `${stdout}${stderr}`
          .split('\n')
          .filter((l) => /ALERT|WARNING|error/i.test(l))
          .join('\n');
        reject(new ConfigRejectedError(output || `${stdout}${stderr}`, false));
      });
    } catch (err) {
      // Node throws some exec failures (EPERM among them) instead of passing them to the callback.
      reject(cannotRun(err as NodeJS.ErrnoException));
    }
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
