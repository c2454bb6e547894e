import { loadSettings, type Settings, secretValues } from './config/settings.js';
import { DfpError } from './errors.js';
import { FlowProxy } from './proxy.js';
import { chooseFormat, createLogger, type Logger, parseLevel } from './util/log.js';

/** Stopping HAProxy does not wait for old workers to drain (it stops them); the rest takes far less. */
const STOP_TIMEOUT_MS = 40_000;

/** `npm start`: runs the proxy in the foreground until SIGTERM or SIGINT. */
async function main(): Promise<void> {
  const isTty = process.stderr.isTTY === true;
  let settings: Settings;
  try {
    settings = loadSettings();
  } catch (err) {
    // No settings yet: log as the environment asks, as far as it can be read.
    fail(createLogger(parseLevel(process.env.LOG_LEVEL), 'dfp', undefined, { format: chooseFormat(process.env.LOG_FORMAT, isTty) }), err);
    return;
  }
  // One stream, stderr; JSON unless it is a terminal or LOG_FORMAT=pretty.
  const log = createLogger(settings.logLevel, 'dfp', undefined, { format: settings.logFormat ?? (isTty ? 'pretty' : 'json'), secrets: secretValues(settings) });
  let proxy: FlowProxy;
  try {
    proxy = await FlowProxy.start(settings, log);
  } catch (err) {
    fail(log, err);
    return;
  }
  let stopping = false;
  /** `keepHaproxy`: HAProxy keeps serving for the next start to take over (docs/operations.md, "Restarts and upgrades"). */
  const stop = (signal: string, keepHaproxy: boolean) => {
    if (stopping) return;
    stopping = true;
    const local = proxy.settings.consulAddresses.length === 0 ? 'the local Consul' : undefined;
    const what = keepHaproxy ? `stopping${local ? ` ${local}` : ''}; HAProxy keeps serving for the next start to take over` : `stopping HAProxy${local ? ` and ${local}` : ''}`;
    log.info(`${signal}: ${what}`, { signal, keepHaproxy });
    // A stop that hangs must still leave no process behind: say where it hung, kill by PID, exit 1.
    setTimeout(() => {
      log.error(`stop did not finish within ${STOP_TIMEOUT_MS / 1000} s (at: ${proxy.stopStep}); killing ${keepHaproxy ? (local ?? 'nothing') : `HAProxy${local ? ` and ${local}` : ''}`}`);
      proxy.killChildren(keepHaproxy);
      process.exit(1);
    }, STOP_TIMEOUT_MS).unref();
    proxy.stop({ keepHaproxy }).then(
      () => process.exit(0),
      (err: unknown) => {
        log.error(`stop failed: ${String(err)}`);
        process.exit(1);
      },
    );
  };
  const keepOnStop = settings.haproxyOnStop === 'keep';
  process.on('SIGTERM', () => stop('SIGTERM', keepOnStop));
  process.on('SIGINT', () => stop('SIGINT', keepOnStop));
  // An upgrade of the control plane, whatever HAPROXY_ON_STOP says: exit, HAProxy serves on.
  process.on('SIGUSR2', () => stop('SIGUSR2', true));
}

function fail(log: Logger, err: unknown): void {
  const message = err instanceof DfpError ? err.message : ((err as Error).stack ?? String(err));
  log.error(`cannot start: ${message}`, err instanceof DfpError ? { code: err.code, ...(err.parameter ? { parameter: err.parameter } : {}) } : undefined);
  process.exitCode = 1;
}

void main();
