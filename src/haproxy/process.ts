import { type ChildProcess, spawn, type StdioOptions } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { HaproxyUnavailableError, ReloadFailedError } from '../errors.js';
import type { Logger } from '../util/log.js';
import { commandArgs, isGone, killQuietly, waitForExit } from '../util/process.js';
import { classifyHaproxyLine } from './output.js';
import { closeQuietly, lineSplitter, OutputChannel } from './output-channel.js';
import { type ProcInfo, parseShowProc, socketCommand } from './socket.js';
import { execRefusal } from './validate.js';

export interface HaproxyPaths {
  readonly config: string;
  /** Loaded after the config: the userlists (secret). */
  readonly secrets: string;
  readonly masterSocket: string;
  readonly adminSocket: string;
  /** The master's PID, for the next start to find it (take it over, or leave a stranger alone). */
  readonly pidFile: string;
  /** The named pipe HAProxy's stdout and stderr go to (output-channel.ts). */
  readonly outputFifo: string;
}

export interface HaproxyStatus {
  readonly running: boolean;
  readonly masterPid: number | undefined;
  /** Times the supervisor had to start HAProxy again after it died. */
  readonly restarts: number;
  /** The master was left serving by a previous run and taken over (not this process's child). */
  readonly takenOver: boolean;
}

/**
 * The master under supervision: our child, or one a previous run left serving and this run took
 * over. A master taken over is not our child, so its exit is noticed by polling its PID.
 */
interface Master {
  readonly pid: number;
  readonly child: ChildProcess | undefined;
  exited: boolean;
  poll?: NodeJS.Timeout;
}

/** How often a master taken over is checked for life (its death is noticed at most this late). */
const POLL_MS = 200;

/** Is this the argument list of an HAProxy master loading this config (`-W`, `-f <config>`)? */
export function loadsConfig(args: readonly string[] | undefined, config: string): boolean {
  if (args === undefined) return false;
  return args.some((a, i) => a === '-f' && args[i + 1] === config) && args.includes('-W');
}

const MAX_OUTPUT_LINES = 400;

/**
 * Owns the HAProxy master (master-worker mode, `-W -S`): starts it, reloads it through the master
 * CLI and confirms each reload, and starts it again with the live (last good) config if it dies.
 * Exactly one master per state directory. HAProxy is the data plane and outlives this process when
 * it is killed (or stopped with HAPROXY_ON_STOP=keep): the next start finds that master through
 * the pid file, makes sure it is ours (its command line loads this directory's config and it
 * answers on this directory's master socket as that PID) and takes it over instead of replacing it.
 */
export class HaproxyProcess {
  private master: Master | undefined;
  /** The master that reached "serving"; only its death triggers a restart. */
  private serving: Master | undefined;
  private stopping = false;
  private restarts = 0;
  private up: Promise<void> | undefined;
  private readonly output: { seq: number; line: string }[] = [];
  private seq = 0;
  private readonly channel: OutputChannel;

  /** Called each time the supervisor starts HAProxy again after it died (metrics). */
  onRestart: () => void = () => undefined;

  /** Puts the last config known to be good back on disk; called when a restart fails to load. */
  private recover: (() => void) | undefined;

  constructor(
    private readonly bin: string,
    private readonly paths: HaproxyPaths,
    private readonly log: Logger,
  ) {
    this.channel = new OutputChannel(paths.outputFifo, lineSplitter((line) => this.record(line)));
  }

  /** Called before HAProxy is started again after it died: the files on disk must be current by then. */
  private beforeRestart: (() => void) | undefined;

  onBeforeRestart(fn: () => void): void {
    this.beforeRestart = fn;
  }

  onRestartFailure(recover: () => void): void {
    this.recover = recover;
  }

  status(): HaproxyStatus {
    const m = this.master;
    const serving = m !== undefined && this.serving === m && !m.exited;
    return { running: serving, masterPid: m?.pid, restarts: this.restarts, takenOver: m !== undefined && m.child === undefined };
  }

  /**
   * The master a previous run left serving this state directory, if there is one and it is ours:
   * the PID in the pid file (or, without one, the PID the master socket gives) runs HAProxy in
   * master-worker mode with this directory's config, and the master socket answers as that PID
   * with a worker. A PID now used by another process is left alone. A master of ours that does
   * not answer is stopped, so that a fresh one can start.
   */
  async findRunning(): Promise<number | undefined> {
    const fromFile = readPid(this.paths.pidFile);
    if (fromFile !== undefined) {
      const found = await this.ours(fromFile, `${this.paths.pidFile} names PID ${fromFile}`);
      if (found) return fromFile;
    }
    // No pid file, or it names no master of ours: one may still answer on the master socket.
    const answered = (await this.showProcQuickly())?.masterPid;
    if (answered === undefined || answered === 0 || answered === fromFile) return undefined;
    return (await this.ours(answered, `the master socket answers as PID ${answered}`)) ? answered : undefined;
  }

  /** Is `pid` a master of this state directory that answers? One that does not is stopped. */
  private async ours(pid: number, how: string): Promise<boolean> {
    if (pid <= 1 || isGone(pid)) {
      this.log.info(`${how}, which is not running`);
      return false;
    }
    // A master re-executing itself for a reload shows an empty command line for a moment.
    let args = commandArgs(pid);
    for (let i = 0; args === undefined && i < 20 && !isGone(pid); i++) {
      await sleep(50);
      args = commandArgs(pid);
    }
    if (!loadsConfig(args, this.paths.config)) {
      // A recycled PID, another directory's HAProxy: never signal a process that is not ours.
      this.log.warn(`${how}, which is not an HAProxy master of this state directory (${(args ?? []).join(' ').slice(0, 200) || 'unknown'}): leaving it alone`);
      return false;
    }
    // A master in the middle of a reload refuses connections for a few milliseconds.
    const info = await this.showProc().catch(() => undefined);
    if (info?.masterPid === pid && info.workers.length > 0) return true;
    this.log.warn(`HAProxy master ${pid} of this state directory ${info ? 'has no worker' : 'does not answer on its master socket'}: stopping it`);
    await this.kill(pid);
    return false;
  }

  /** Stops a master found by findRunning() that cannot be taken over. */
  async stopLeftover(pid: number, why: string): Promise<void> {
    this.log.warn(`stopping HAProxy master ${pid} left by the previous run: ${why}`);
    await this.kill(pid);
  }

  /** Supervises a master found by findRunning(): it keeps serving as it is. */
  adopt(pid: number): void {
    this.stopping = false;
    this.openOutput();
    const master: Master = { pid, child: undefined, exited: false };
    // Only whether the PID lives: its command line is briefly unreadable while it re-executes for
    // a reload, and a PID is not reused within one interval.
    master.poll = setInterval(() => {
      if (!isGone(pid)) return;
      clearInterval(master.poll);
      master.exited = true;
      this.onExit(master, null, null);
    }, POLL_MS);
    master.poll.unref();
    this.master = master;
    this.serving = master;
    this.up = Promise.resolve();
    writeFileSync(this.paths.pidFile, `${pid}\n`);
    this.log.info(`took over HAProxy master ${pid}, left serving by the previous run`, { masterPid: pid });
  }

  /** Starts HAProxy with the config file as it is on disk. Resolves once a worker serves. */
  async start(): Promise<void> {
    this.stopping = false;
    this.openOutput();
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

  async showProc(timeoutMs?: number): Promise<ProcInfo> {
    return parseShowProc(await socketCommand(this.paths.masterSocket, 'show proc', { retryForMs: 2000, ...(timeoutMs === undefined ? {} : { timeoutMs }) }));
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
   * Reloads through the master CLI and confirms it: success is a new worker; failure is the
   * failed-reload counter going up (HAProxy keeps the old worker serving). The master's reply to
   * `reload` says nothing, so the outcome is observed, with HAProxy's log lines as the reason.
   *
   * A new worker is seen first on the admin socket, which it binds before it serves: at 10,000
   * services it answered there ~1.5 s before the master listed it (the master stays busy after the
   * fork; measured 2.9 s against 4.5 s). The master still tells a refused reload.
   */
  async reload(timeoutMs: number): Promise<void> {
    await this.whenUp();
    await this.settling;
    const master = this.master;
    const before = await this.showProc().catch((err: unknown) => {
      throw new HaproxyUnavailableError(`the HAProxy master does not answer on its socket: ${(err as Error).message}`, err);
    });
    const mark = this.seq;
    const restarts = this.restarts;
    try {
      await socketCommand(this.paths.masterSocket, 'reload', { retryForMs: 1000 });
    } catch (err) {
      // The master re-executes at once and may drop the connection: that is not a failure.
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') throw new ReloadFailedError(`reload command failed: ${String(err)}`, err);
    }
    const deadline = Date.now() + timeoutMs;
    const isNew = (pid: number | undefined) => pid !== undefined && pid !== 0 && pid !== before.masterPid && !before.workers.includes(pid) && !before.oldWorkers.includes(pid);
    // A master that died and was started again (from the last good files) has new workers too:
    // they are no sign that this reload took.
    const sameMaster = () => this.master === master && master !== undefined && !master.exited && this.restarts === restarts;
    // The master's verdict: the new worker listed, or the reload refused. Also what `settling` waits for.
    const fromMaster = (async (): Promise<'up' | Error> => {
      while (Date.now() < deadline) {
        if (!sameMaster()) return new ReloadFailedError(`HAProxy exited during the reload: ${this.outputSince(mark) || 'no output'}`);
        const info = await this.showProc(Math.max(1, deadline - Date.now())).catch(() => undefined);
        // An empty answer (a master re-executing drops its connections) names no master at all.
        if (!sameMaster() || (info !== undefined && info.masterPid !== 0 && info.masterPid !== before.masterPid)) {
          return new ReloadFailedError(`HAProxy exited during the reload: ${this.outputSince(mark) || 'no output'}`);
        }
        if (info?.workers.some(isNew)) return 'up';
        if (info !== undefined && (info.failed > before.failed || /Loading failure/.test(this.outputSince(mark)))) {
          return new ReloadFailedError(`HAProxy refused to reload: ${this.outputSince(mark) || 'no output'}`);
        }
        await sleep(5);
      }
      return new ReloadFailedError(`no new HAProxy worker within ${timeoutMs} ms: ${this.outputSince(mark) || 'no output'}`);
    })();
    let decided = false;
    const fromWorker = (async (): Promise<'up' | undefined> => {
      while (!decided && Date.now() < deadline) {
        const pid = await this.workerPid();
        if (!sameMaster()) return undefined;
        if (isNew(pid)) return 'up';
        await sleep(10);
      }
      return undefined;
    })();
    const outcome = await Promise.race([fromMaster, fromWorker.then((up) => up ?? fromMaster)]);
    decided = true;
    // Until the master answers again, the next reload and a detach wait for it.
    this.settling = fromMaster.then(() => undefined);
    if (outcome !== 'up') throw outcome;
  }

  /** The master's answer to the last reload, when its new worker was seen serving first. */
  private settling: Promise<void> | undefined;

  /** The PID of the worker answering on the admin socket now, if one does. */
  private async workerPid(): Promise<number | undefined> {
    try {
      const info = await socketCommand(this.paths.adminSocket, 'show info', { retryForMs: 0, timeoutMs: 1000 });
      const pid = /^Pid: (\d+)$/m.exec(info)?.[1];
      return pid === undefined ? undefined : Number(pid);
    } catch {
      return undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const master = this.release();
    if (master !== undefined && !master.exited) await this.kill(master.pid);
    rmSync(this.paths.pidFile, { force: true });
    this.channel.close();
  }

  /**
   * Stops supervising and leaves HAProxy serving as it is, for the next start with this state
   * directory to take over (HAPROXY_ON_STOP=keep, SIGUSR2). The pid file stays.
   */
  async detach(): Promise<void> {
    // A master still re-executing would look absent to the next start, which would start another.
    await this.settling;
    this.stopping = true;
    const master = this.release();
    master?.child?.unref();
    this.channel.close();
    if (master !== undefined && !master.exited) this.log.info(`leaving HAProxy master ${master.pid} serving, for the next start to take over`, { masterPid: master.pid });
  }

  private release(): Master | undefined {
    const master = this.master;
    this.master = undefined;
    clearInterval(master?.poll);
    return master;
  }

  /** SIGTERM to the master stops its workers; the whole group is killed if it lingers. */
  private async kill(pid: number): Promise<void> {
    const info = await this.showProcQuickly();
    killQuietly(pid, 'SIGTERM');
    if (!(await waitForExit(pid, 5000))) killQuietly(-pid, 'SIGKILL');
    await waitForExit(pid, 2000);
    killQuietly(-pid, 'SIGKILL'); // any worker still draining
    for (const worker of [...(info?.workers ?? []), ...(info?.oldWorkers ?? [])]) await waitForExit(worker, 2000);
  }

  /** Recent HAProxy output lines after sequence `mark`, ALERTs and WARNINGs first. */
  outputSince(mark: number): string {
    return this.output
      .filter((o) => o.seq > mark)
      .map((o) => o.line)
      .filter((l) => /ALERT|WARNING|failure|error/i.test(l))
      .join('\n');
  }

  private openOutput(): void {
    if (!this.channel.isOpen && !this.channel.open()) {
      this.log.warn(`cannot create the named pipe ${this.paths.outputFifo}: HAProxy's output goes to pipes of this process, and a master taken over by the next start is not heard`);
    }
  }

  private async spawnAndWait(): Promise<void> {
    for (const sock of [this.paths.masterSocket, this.paths.adminSocket]) rmSync(sock, { force: true });
    const mark = this.seq;
    const writer = this.channel.isOpen ? this.channel.writer() : undefined;
    const stdio: StdioOptions = writer === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', writer, writer];
    let child: ChildProcess;
    try {
      child = spawn(this.bin, ['-W', '-S', `${this.paths.masterSocket},mode,600`, '-f', this.paths.config, '-f', this.paths.secrets], {
        // Own process group: stop() can reach draining workers, and a Ctrl-C in the terminal goes
        // to the proxy, which stops HAProxy in order (or leaves it serving, HAPROXY_ON_STOP).
        detached: true,
        stdio,
      });
    } catch (err) {
      // Node throws some exec failures (EPERM among them) instead of emitting 'error'.
      const e = err as NodeJS.ErrnoException;
      throw new HaproxyUnavailableError(execRefusal(this.bin, e) ?? `cannot start HAProxy (${this.bin}): ${e.message}`, err);
    } finally {
      if (writer !== undefined) closeQuietly(writer);
    }
    const master: Master = { pid: child.pid ?? 0, child, exited: false };
    this.master = master;
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    for (const stream of [child.stdout, child.stderr]) {
      stream?.setEncoding('utf8');
      stream?.on('data', lineSplitter((line) => this.record(line)));
    }
    child.once('exit', (code, signal) => {
      master.exited = true;
      this.onExit(master, code, signal);
    });
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
    this.serving = master;
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

  private onExit(master: Master, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping || this.serving !== master) return;
    this.serving = undefined;
    const how = master.child === undefined ? 'taken over from the previous run is gone' : `exited (code ${code}, signal ${signal})`;
    this.log.error(`HAProxy master ${master.pid} ${how}; starting it again with the last good config`);
    killQuietly(-master.pid, 'SIGKILL'); // workers of the dead master
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

function readPid(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
