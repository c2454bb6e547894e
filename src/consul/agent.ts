import http from 'node:http';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../util/log.js';
import { freePort, isPortFree } from '../util/ports.js';
import { commandLine, isAlive, killQuietly, waitForExit } from '../util/process.js';

export interface AgentPorts {
  readonly http: number;
  readonly server: number;
  readonly serfLan: number;
  readonly serfWan: number;
  /** The https listener's port, with AgentOptions.tls. */
  readonly https?: number;
}

/** PEM files for an https listener (Consul's `ca_file`, `cert_file`, `key_file`). */
export interface AgentTls {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** Require a client certificate signed by caFile (`verify_incoming`). */
  readonly verifyIncoming?: boolean;
}

export interface AgentOptions {
  readonly bin: string;
  /** `dev`: in-memory agent (tests). `server`: single-node server whose data persists in dataDir. */
  readonly mode: 'dev' | 'server';
  /** Required for `server`; for `dev` only the log and pid files go there. */
  readonly dataDir: string;
  readonly bindIp?: string;
  /** Ports to use; random free ones when absent. */
  readonly ports?: AgentPorts;
  /** `server` mode in a cluster: how many servers to expect and whom to join (`ip:serfLanPort`). */
  readonly cluster?: { readonly expect: number; readonly join: readonly string[]; readonly node: string };
  readonly log?: Logger;
  /**
   * Consul's `limits.http_max_conns_per_client`. Absent: Consul's default (200), the limit users'
   * agents have; only a benchmark that says so may raise it.
   */
  readonly httpMaxConnsPerClient?: number;
  /** More HCL for the agent's configuration (tests: a Consul with ACLs enforced). */
  readonly hcl?: readonly string[];
  /**
   * An https listener beside the http one (tests of a Consul reached over TLS). The http listener
   * stays: it is what readiness is polled on.
   */
  readonly tls?: AgentTls;
}

async function randomPorts(https: boolean): Promise<AgentPorts> {
  return { http: await freePort(), server: await freePort(), serfLan: await freePort(), serfWan: await freePort(), ...(https ? { https: await freePort() } : {}) };
}

/** The agent's TLS settings as HCL: paths quoted as HCL strings. */
function tlsHcl(tls: AgentTls, httpsPort: number): string[] {
  const q = (p: string) => JSON.stringify(p);
  return [`ports { https = ${httpsPort} }`, `ca_file = ${q(tls.caFile)}`, `cert_file = ${q(tls.certFile)}`, `key_file = ${q(tls.keyFile)}`, `verify_incoming = ${tls.verifyIncoming === true}`];
}

/**
 * A Consul agent we start ourselves: the embedded single-node server `npm start` brings up when
 * CONSUL_ADDRESS is unset, and the dev agents of the test suite.
 */
export class ConsulAgent {
  private child: ChildProcess | undefined;

  private constructor(
    readonly options: AgentOptions,
    readonly ports: AgentPorts,
  ) {}

  get address(): string {
    return `http://${this.options.bindIp ?? '127.0.0.1'}:${this.ports.http}`;
  }

  /** The https listener's address, with AgentOptions.tls. */
  get httpsAddress(): string | undefined {
    return this.ports.https === undefined ? undefined : `https://${this.options.bindIp ?? '127.0.0.1'}:${this.ports.https}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts an agent and waits until it has a leader. Retries with new ports on a port race. */
  static async start(options: AgentOptions): Promise<ConsulAgent> {
    mkdirSync(options.dataDir, { recursive: true });
    await killLeftover(options.dataDir);
    let lastError: unknown;
    // A cluster member's ports are part of its peers' join addresses: no retry on other ports.
    for (let attempt = 0; attempt < (options.cluster ? 1 : 5); attempt++) {
      const ports = options.ports && attempt === 0 ? options.ports : await randomPorts(options.tls !== undefined);
      const agent = new ConsulAgent(options, ports);
      try {
        await agent.spawn();
        return agent;
      } catch (err) {
        lastError = err;
        await agent.stop();
      }
    }
    throw lastError;
  }

  /**
   * For the embedded server: its ports are kept in the data dir so a restart finds its own raft
   * peer address again (a single server whose address changed would wait for a leader forever).
   */
  static async persistentPorts(dataDir: string, bindIp = '127.0.0.1'): Promise<AgentPorts> {
    const file = path.join(dataDir, 'dfp-ports.json');
    await killLeftover(dataDir); // its ports are ours to reuse
    if (existsSync(file)) {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as AgentPorts;
      const free = await Promise.all(Object.values(saved).map((p: number) => isPortFree(p, bindIp)));
      if (free.every(Boolean)) return saved;
    }
    const http = (await isPortFree(8500, bindIp)) ? 8500 : await freePort(bindIp);
    const ports = { http, server: await freePort(bindIp), serfLan: await freePort(bindIp), serfWan: await freePort(bindIp) };
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(file, JSON.stringify(ports));
    return ports;
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child?.pid === undefined || child.exitCode !== null) return;
    killQuietly(child.pid, signal);
    if (!(await waitForExit(child.pid, signal === 'SIGKILL' ? 2000 : 8000))) killQuietly(child.pid, 'SIGKILL');
    await waitForExit(child.pid, 2000);
    rmSync(path.join(this.options.dataDir, 'dfp-consul.pid'), { force: true });
  }

  private async spawn(): Promise<void> {
    const { options, ports } = this;
    const ip = options.bindIp ?? '127.0.0.1';
    const common = ['-bind', ip, '-client', ip, '-http-port', `${ports.http}`, '-server-port', `${ports.server}`, '-serf-lan-port', `${ports.serfLan}`, '-dns-port', '-1', '-grpc-port', '-1', '-log-level', 'warn'];
    const max = options.httpMaxConnsPerClient;
    if (options.tls && ports.https === undefined) throw new Error('an agent with tls needs an https port');
    const hcl = [
      ...(max === undefined ? [] : [`limits { http_max_conns_per_client = ${max} }`]),
      ...(options.tls && ports.https !== undefined ? tlsHcl(options.tls, ports.https) : []),
      ...(options.hcl ?? []),
    ].flatMap((h) => ['-hcl', h]);
    const args =
      options.mode === 'dev'
        ? ['agent', '-dev', '-node', `dev-${ports.http}`, ...common, '-serf-wan-port', '-1', ...hcl]
        : [
            'agent',
            '-server',
            '-bootstrap-expect',
            String(options.cluster?.expect ?? 1),
            '-node',
            options.cluster?.node ?? 'dfp-local',
            '-data-dir',
            path.join(options.dataDir, 'data'),
            ...common,
            '-serf-wan-port',
            `${ports.serfWan}`,
            ...(options.cluster ? ['-retry-interval', '1s', ...options.cluster.join.flatMap((j) => ['-retry-join', j])] : []),
            '-hcl',
            'performance { raft_multiplier = 1 }',
            ...hcl,
          ];
    const logFile = openSync(path.join(options.dataDir, 'consul.log'), 'a');
    const child = spawn(options.bin, args, { detached: true, stdio: ['ignore', logFile, logFile] });
    this.child = child;
    const failed = new Promise<never>((_, reject) => {
      child.once('error', (err) => reject(new Error(`cannot start Consul (${options.bin}): ${err.message}; run npm run setup`, { cause: err })));
      child.once('exit', (code) => reject(new Error(`Consul exited at start (code ${code}); see ${path.join(options.dataDir, 'consul.log')}`)));
    });
    failed.catch(() => undefined);
    if (child.pid !== undefined) writeFileSync(path.join(options.dataDir, 'dfp-consul.pid'), `${child.pid}\n`);
    const ready = (async () => {
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline) {
        try {
          // A connection of its own that closes: nothing of the readiness poll stays open beside the
          // proxy's bounded pools (a test counts the process's connections to Consul).
          const { status, body } = await getClosing(`${this.address}/v1/status/leader`, 1000);
          if (status === 200 && body.length > 2) return;
        } catch {
          // not up yet
        }
        await sleep(25);
      }
      throw new Error('Consul did not elect a leader within 30 s');
    })();
    await Promise.race([ready, failed]);
    options.log?.info(`Consul ${options.mode} agent ${child.pid} ready at ${this.address}`);
  }
}

/** A Consul we started for this data dir but whose proxy died without stopping it. */
async function killLeftover(dataDir: string): Promise<void> {
  const file = path.join(dataDir, 'dfp-consul.pid');
  if (!existsSync(file)) return;
  const pid = Number(readFileSync(file, 'utf8').trim());
  const cmd = Number.isInteger(pid) && pid > 1 && isAlive(pid) ? commandLine(pid) : undefined;
  if (cmd?.includes('consul') && (cmd.includes(dataDir) || cmd.includes('-dev'))) {
    killQuietly(pid, 'SIGKILL');
    await waitForExit(pid, 5000);
  }
  rmSync(file, { force: true });
}

function getClosing(url: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, headers: { Connection: 'close' }, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        body += c;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}
