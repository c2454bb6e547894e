import { loadSettings } from './config/settings.js';
import { DfpError } from './errors.js';
import { FlowProxy } from './proxy.js';
import { createLogger, parseLevel } from './util/log.js';

/** Stopping HAProxy does not wait for old workers to drain (it stops them); the rest takes far less. */
const STOP_TIMEOUT_MS = 40_000;

/** `npm start`: runs the proxy in the foreground until SIGTERM or SIGINT. */
async function main(): Promise<void> {
  const log = createLogger(parseLevel(process.env.LOG_LEVEL));
  let proxy: FlowProxy;
  try {
    proxy = await FlowProxy.start(loadSettings(), log);
  } catch (err) {
    const message = err instanceof DfpError ? err.message : ((err as Error).stack ?? String(err));
    log.error(`cannot start: ${message}`);
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info(`${signal}: stopping HAProxy${proxy.settings.consulAddresses.length === 0 ? ' and the local Consul' : ''}`);
    // A stop that hangs must still leave no process behind: say where it hung, kill by PID, exit 1.
    setTimeout(() => {
      log.error(`stop did not finish within ${STOP_TIMEOUT_MS / 1000} s (at: ${proxy.stopStep}); killing HAProxy${proxy.settings.consulAddresses.length === 0 ? ' and the local Consul' : ''}`);
      proxy.killChildren();
      process.exit(1);
    }, STOP_TIMEOUT_MS).unref();
    proxy.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error(`stop failed: ${String(err)}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

void main();
