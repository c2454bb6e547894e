import { loadSettings } from './config/settings.js';
import { DfpError } from './errors.js';
import { FlowProxy } from './proxy.js';
import { createLogger, parseLevel } from './util/log.js';

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
