import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { HaproxyUnavailableError, ReloadFailedError } from '../errors.js';
import type { Logger } from '../util/log.js';
import { commandLine, isAlive, killQuietly, waitForExit } from '../util/process.js';
import { classifyHaproxyLine } from './output.js';
import { type ProcInfo, parseShowProc, socketCommand } from './socket.js';
import { execRefusal } from './validate.js';

export interface HaproxyPaths {
  readonly config: string;
  /** Loaded after the config: the userlists (secret). */
  readonly secrets: string;
  readonly masterSocket: string;
  readonly adminSocket: string;
  /** Where we record the master PID, to clean up after a proxy that died without stopping it. */
  readonly pidFile: string;
}

export interface HaproxyStatus {
  readonly running: boolean;
  readonly masterPid: number | undefined;
  /** Times the supervisor had to start HAProxy again after it died. */
  readonly restarts: number;
}

const MAX_OUTPUT_LINES = 400;

/**
 * Owns the HAProxy master (master-worker mode, `-W -S`): starts it, reloads it through the master
 * CLI and confirms each reload, and starts it again with the live (last good) config if it dies.
 * Exactly one master per state directory: a master left behind by a proxy that was killed is
 * found through the pid file and stopped first.
 */
export class HaproxyProcess {
  private child: ChildProcess | undefined;
  /** The child that reached "serving"; only its death triggers a restart. */
  private serving: ChildProcess | undefined;
  private stopping = false;
  private restarts = 0;
  private up: Promise<void> | undefined;
  private readonly output: { seq: number; line: string }[] = [];
  private seq = 0;

  /** Called each time the supervisor starts HAProxy again after it died (metrics). */
  onRestart: () => void = () => undefined;

  /** Puts the last config known to be good back on disk; called when a restart fails to load. */
  private recover: (() => void) | undefined;

  constructor(
    private readonly bin: string,
    private readonly paths: HaproxyPaths,
    private readonly log: Logger,
  ) {}

  /** Called before HAProxy is started again after it died: the files on disk must be current by then. */
  private beforeRestart: (() => void) | undefined;

  onBeforeRestart(fn: () => void): void {
    this.beforeRestart = fn;
  }

  onRestartFailure(recover: () => void): void {
    this.recover = recover;
  }

  status(): HaproxyStatus {
    const serving = this.serving !== undefined && this.serving === this.child && this.serving.exitCode === null;
    return { running: serving, masterPid: this.child?.pid, restarts: this.restarts };
  }

  /** Starts HAProxy with the config file as it is on disk. Resolves once a worker serves. */
  async start(): Promise<void> {
    this.stopping = false;
    this.killLeftover();
    this.up = this.spawnAndWait();
    await this.up;
  }

  /** Waits until HAProxy is up (e.g. while the supervisor restarts it). */
  async whenUp(timeoutMs = 15_000): Promise<void> {
    if (this.stopping || this.up === undefined) throw new HaproxyUnavailableError('HAProxy is not running');
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new HaproxyUnavailableError(`HAProxy did not come up within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([this.up, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async showProc(): Promise<ProcInfo> {
    return parseShowProc(await socketCommand(this.paths.masterSocket, 'show proc', { retryForMs: 2000 }));
  }

  private async showProcQuickly(): Promise<ProcInfo | undefined> {
    try {
      return parseShowProc(await socketCommand(this.paths.masterSocket, 'show proc', { retryForMs: 0, timeoutMs: 1000 }));
    } catch {
      return undefined;
    }
  }

  /** A runtime API command to the current worker through the admin socket. */
  async adminCommand(command: string): Promise<string> {
    return socketCommand(this.paths.adminSocket, command, { retryForMs: 1000 });
  }

  /**
   * Reloads through the master CLI and confirms it: success is a new worker PID; failure is the
   * failed-reload counter going up (HAProxy keeps the old worker serving). The master's reply to
   * `reload` says nothing, so the outcome is observed, with HAProxy's log lines as the reason.
   */
  async reload(timeoutMs: number): Promise<void> {
    await this.whenUp();
    const child = this.child;
    const before = await this.showProc().catch((err: unknown) => {
      throw new HaproxyUnavailableError(`the HAProxy master does not answer on its socket: ${(err as Error).message}`, err);
    });
    const mark = this.seq;
    try {
      await socketCommand(this.paths.masterSocket, 'reload', { retryForMs: 1000 });
    } catch (err) {
      // The master re-executes at once and may drop the connection: that is not a failure.
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') throw new ReloadFailedError(`reload command failed: ${String(err)}`, err);
    }
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.child !== child || child?.exitCode !== null) {
        throw new ReloadFailedError(`HAProxy exited during the reload: ${this.outputSince(mark) || 'no output'}`);
      }
      let info: ProcInfo;
      try {
        info = await this.showProc();
      } catch {
        await sleep(5);
        continue;
      }
      if (info.workers.some((pid) => !before.workers.includes(pid))) return;
      if (info.failed > before.failed || /Loading failure/.test(this.outputSince(mark))) {
        throw new ReloadFailedError(`HAProxy refused to reload: ${this.outputSince(mark) || 'no output'}`);
      }
      await sleep(5);
    }
    throw new ReloadFailedError(`no new HAProxy worker within ${timeoutMs} ms: ${this.outputSince(mark) || 'no output'}`);
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    this.child = undefined;
    if (child?.pid !== undefined && child.exitCode === null) {
      const pid = child.pid;
      const info = await this.showProcQuickly();
      // SIGTERM to the master stops its workers; the whole group is killed if it lingers.
      killQuietly(pid, 'SIGTERM');
      if (!(await waitForExit(pid, 5000))) killQuietly(-pid, 'SIGKILL');
      await waitForExit(pid, 2000);
      killQuietly(-pid, 'SIGKILL'); // any worker still draining
      for (const worker of [...(info?.workers ?? []), ...(info?.oldWorkers ?? [])]) await waitForExit(worker, 2000);
    }
    rmSync(this.paths.pidFile, { force: true });
  }

  /** Recent HAProxy output lines after sequence `mark`, ALERTs and WARNINGs first. */
  outputSince(mark: number): string {
    return this.output
      .filter((o) => o.seq > mark)
      .map((o) => o.line)
      .filter((l) => /ALERT|WARNING|failure|error/i.test(l))
      .join('\n');
  }

  private killLeftover(): void {
    if (!existsSync(this.paths.pidFile)) return;
    const pid = Number(readFileSync(this.paths.pidFile, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 1 && isAlive(pid) && (commandLine(pid) ?? '').includes(this.paths.config)) {
      this.log.warn(`stopping HAProxy master ${pid} left behind by a previous run`);
      killQuietly(-pid, 'SIGKILL');
      killQuietly(pid, 'SIGKILL');
    }
    rmSync(this.paths.pidFile, { force: true });
  }

  private async spawnAndWait(): Promise<void> {
    for (const sock of [this.paths.masterSocket, this.paths.adminSocket]) rmSync(sock, { force: true });
    const mark = this.seq;
    let child: ChildProcess;
    try {
      child = spawn(this.bin, ['-W', '-S', `${this.paths.masterSocket},mode,600`, '-f', this.paths.config, '-f', this.paths.secrets], {
        // Own process group: stop() can reach draining workers, and a Ctrl-C in the terminal goes
        // to the proxy, which stops HAProxy in order.
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (err) {
      // Node throws some exec failures (EPERM among them) instead of emitting 'error'.
      const e = err as NodeJS.ErrnoException;
      throw new HaproxyUnavailableError(execRefusal(this.bin, e) ?? `cannot start HAProxy (${this.bin}): ${e.message}`, err);
    }
    this.child = child;
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    for (const stream of [child.stdout, child.stderr]) {
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) this.record(line);
      });
    }
    child.once('exit', (code, signal) => this.onExit(child, code, signal));
    if (child.pid !== undefined) writeFileSync(this.paths.pidFile, `${child.pid}\n`);
    const deadline = Date.now() + 30_000;
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code, signal) =>
        reject(new HaproxyUnavailableError(`HAProxy exited at start (code ${code}, signal ${signal}): ${this.outputSince(mark) || 'no output'}`)),
      ),
    );
    exited.catch(() => undefined);
    const started = (async () => {
      while (Date.now() < deadline) {
        try {
          // Raced against the exit so a master that dies while starting is noticed at once.
          if ((await Promise.race([this.showProc(), exited])).workers.length > 0) return;
        } catch (err) {
          if (child.exitCode !== null || child.signalCode !== null) throw err;
          // socket not there yet
        }
        await sleep(10);
      }
      throw new HaproxyUnavailableError(`HAProxy did not start within 30 s: ${this.outputSince(mark)}`);
    })();
    await Promise.race([started, spawnError]).catch((err: unknown) => {
      if (child.exitCode === null) killQuietly(-(child.pid ?? 0), 'SIGKILL');
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new HaproxyUnavailableError(`HAProxy binary not found (${this.bin}); run npm run setup or install haproxy`, err);
      }
      const refusal = execRefusal(this.bin, err as NodeJS.ErrnoException);
      if (refusal) throw new HaproxyUnavailableError(refusal, err);
      throw err;
    });
    this.serving = child;
    this.log.info(`HAProxy master ${child.pid} is serving`, { masterPid: child.pid });
  }

  private record(line: string): void {
    if (line.trim() === '') return;
    this.output.push({ seq: ++this.seq, line });
    if (this.output.length > MAX_OUTPUT_LINES) this.output.shift();
    // HAProxy's own level, mapped (output.ts): its routine lines of every reload stay at debug.
    const c = classifyHaproxyLine(line, this.stopping);
    this.log[c.level](c.text, c.haproxyLevel === undefined ? undefined : { haproxyLevel: c.haproxyLevel, pid: c.pid });
  }

  private onExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping || this.serving !== child) return;
    this.serving = undefined;
    this.log.error(`HAProxy master ${child.pid} exited (code ${code}, signal ${signal}); starting it again with the last good config`);
    killQuietly(-(child.pid ?? 0), 'SIGKILL'); // workers of the dead master
    this.restarts++;
    this.onRestart();
    try {
      this.beforeRestart?.();
    } catch (err) {
      this.log.error(`writing the current config before the restart failed: ${(err as Error).message}`);
    }
    this.up = this.restartLoop();
    this.up.catch(() => undefined);
  }

  private async restartLoop(): Promise<void> {
    let delay = 100;
    while (!this.stopping) {
      try {
        await this.spawnAndWait();
        return;
      } catch (err) {
        this.log.error(`HAProxy restart failed: ${(err as Error).message}; retrying in ${delay} ms with the last good config`);
        try {
          this.recover?.();
        } catch (e) {
          this.log.error(`restoring the last good config failed: ${(e as Error).message}`);
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
    throw new HaproxyUnavailableError('HAProxy is stopping');
  }
}
