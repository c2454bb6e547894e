import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { loadSettings } from '../../src/config/settings.js';
import { ConsulAgent } from '../../src/consul/agent.js';
import { type ContainerPort, deregister, register } from '../../src/consul/registrator.js';
import { FlowProxy } from '../../src/proxy.js';
import { createLogger, parseLevel } from '../../src/util/log.js';
import { freePort } from '../../src/util/ports.js';
import { isGone, killQuietly } from '../../src/util/process.js';
import { PROJECT_ROOT, proxyArgs } from '../../src/util/project.js';

/**
 * Real parts for integration tests: Consul dev agents, proxies with their own HAProxy, and small
 * HTTP backends that answer with their identity, all on random free loopback ports. Every process
 * is tracked by PID and killed when the test process exits, even after a crash.
 */

const tracked = new Set<number>();
process.on('exit', () => {
  for (const pid of tracked) {
    killQuietly(-pid, 'SIGKILL');
    killQuietly(pid, 'SIGKILL');
  }
});

export function track(pid: number | undefined): void {
  if (pid !== undefined) tracked.add(pid);
}

/** Temp dirs carry the `dfp-test-` marker that scripts/check-leaks.sh looks for. */
export function tempDir(): string {
  return mkdtempSync(path.join(os.tmpdir(), 'dfp-test-'));
}

export const CONSUL_BIN = process.env.CONSUL_BIN ?? path.join(PROJECT_ROOT, '.tools/bin/consul');

/**
 * Every test process, proxy and HAProxy talks to Consul from 127.0.0.1, so they share one client's
 * connection budget. A proxy holds at most 10 connections (issue 9), but tests' own requests use
 * Node's unbounded fetch pool, so most agents allow more than Consul's default 200;
 * startConsulDefaultLimits() is the agent users have (live-discovery-load.test.ts counts on it).
 */
export const TEST_CONSUL_LIMIT = 16384;

export async function startConsul(httpMaxConnsPerClient = TEST_CONSUL_LIMIT): Promise<ConsulAgent> {
  const agent = await ConsulAgent.start({ bin: CONSUL_BIN, mode: 'dev', dataDir: tempDir(), httpMaxConnsPerClient });
  track(agent.pid);
  return agent;
}

/**
 * A dev agent with Consul's default limits (`http_max_conns_per_client` = 200), as users' agents
 * have: for tests that the proxy stays within them.
 */
export async function startConsulDefaultLimits(): Promise<ConsulAgent> {
  const agent = await ConsulAgent.start({ bin: CONSUL_BIN, mode: 'dev', dataDir: tempDir() });
  track(agent.pid);
  return agent;
}

export async function stopConsul(agent: ConsulAgent): Promise<void> {
  const pid = agent.pid;
  await agent.stop('SIGKILL');
  if (pid !== undefined) tracked.delete(pid);
  rmSync(agent.options.dataDir, { recursive: true, force: true });
}

export interface TestProxy {
  readonly proxy: FlowProxy;
  readonly api: string;
  readonly http: string;
  readonly httpPort: number;
  readonly stateDir: string;
  stop(): Promise<void>;
}

export async function startProxy(consulAddress: string, env: Record<string, string> = {}): Promise<TestProxy> {
  const stateDir = env.STATE_DIR ?? tempDir();
  const httpPort = await freePort();
  const settings = loadSettings({
    CONSUL_ADDRESS: consulAddress,
    STATE_DIR: stateDir,
    PORT: '0',
    IP: '127.0.0.1',
    DEFAULT_PORTS: String(httpPort),
    SECRETS_DIR: path.join(stateDir, 'no-secrets'),
    ...env,
  });
  const proxy = await FlowProxy.start(settings, createLogger(parseLevel(process.env.TEST_LOG_LEVEL ?? 'error')));
  track(proxy.haproxy.status().masterPid);
  if (env.NO_WAIT_READY !== '1') await proxy.whenReady();
  return {
    proxy,
    api: `http://127.0.0.1:${proxy.apiPort}/v1/docker-flow-proxy`,
    http: `http://127.0.0.1:${settings.bindPorts[0]}`,
    httpPort: settings.bindPorts[0] ?? httpPort,
    stateDir,
    async stop() {
      const pid = proxy.haproxy.status().masterPid;
      await proxy.stop();
      if (pid !== undefined) tracked.delete(pid);
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export interface Backend {
  readonly name: string;
  /** What `/health` answers: flip to false to fail the Consul check. */
  healthy: boolean;
  readonly port: number;
  readonly server: Server;
  close(): Promise<void>;
}

/** What a backend answers: the request as the instance saw it. */
export interface Echo {
  readonly instance: string;
  readonly method: string;
  readonly path: string;
  readonly headers: Record<string, string | string[] | undefined>;
}

/**
 * An HTTP backend that answers every request with {instance, method, path, headers} as JSON, and
 * always sends the response headers `X-Powered-By: echo` and `X-Internal: yes` (for response-header
 * rules). `/health` answers as `healthy` says; a path containing "slow" answers after 1.5 s (a
 * request still in flight during a change). An `Upgrade` request is answered with 101 and the raw
 * socket then echoes what it receives.
 */
export async function startBackend(name: string, host = '127.0.0.1'): Promise<Backend> {
  const state = { healthy: true };
  const upgraded = new Set<Socket>();
  const server = createServer((req, res) => {
    if (req.url === '/health') {
      res.writeHead(state.healthy ? 200 : 500);
      res.end();
      return;
    }
    const echo: Echo = { instance: name, method: req.method ?? '', path: req.url ?? '', headers: req.headers };
    setTimeout(
      () => {
        res.writeHead(200, { 'Content-Type': 'application/json', 'X-Powered-By': 'echo', 'X-Internal': 'yes' });
        res.end(req.method === 'HEAD' ? undefined : JSON.stringify(echo));
      },
      req.url?.includes('slow') ? 1500 : 0,
    );
  });
  server.on('upgrade', (req, socket: Socket, head: Buffer) => {
    upgraded.add(socket);
    socket.on('close', () => upgraded.delete(socket));
    socket.on('error', () => socket.destroy());
    // RFC 6455 handshake answer (HAProxy checks WebSocket upgrades), then a raw echo.
    const key = req.headers['sec-websocket-key'];
    const accept = key ? `Sec-WebSocket-Accept: ${createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')}\r\n` : '';
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade ?? 'websocket'}\r\nConnection: Upgrade\r\n${accept}X-Instance: ${name}\r\n\r\n`);
    if (head.length > 0) socket.write(head);
    socket.on('data', (chunk) => socket.write(chunk));
  });
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return {
    name,
    get healthy() {
      return state.healthy;
    },
    set healthy(v: boolean) {
      state.healthy = v;
    },
    port: (server.address() as AddressInfo).port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of upgraded) s.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export interface Registration {
  /** Registrator's ID: `<hostname>:<container>:<exposedPort>`. */
  readonly id: string;
}

/** Registers an instance exactly as Registrator does (src/consul/registrator.ts); `token` for a Consul with ACLs. */
export async function registerLikeRegistrator(consul: string, port: ContainerPort, token?: string): Promise<Registration> {
  return { id: await register(consul, port, token) };
}

export { deregister };

/** An echo backend `<service>.<n>` registered as Registrator would (container port 8080); the caller closes it. */
export async function startInstance(consul: string, service: string, n = 0): Promise<Backend> {
  const b = await startBackend(`${service}.${n}`);
  await registerLikeRegistrator(consul, { name: service, container: `${service}.${n}`, exposedPort: 8080, hostPort: b.port });
  return b;
}

export interface ApiAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  readonly text: string;
}

export async function callApi(p: TestProxy, endpoint: string, params: Record<string, string> | string = {}): Promise<ApiAnswer> {
  const query = typeof params === 'string' ? params : new URLSearchParams(params).toString();
  const res = await fetch(`${p.api}/${endpoint}${query ? `?${query}` : ''}`);
  const text = await res.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // text endpoints
  }
  return { status: res.status, body, text };
}

/** A request through HAProxy on a fresh connection. */
/** Which instances answer `urlPath`, over `n` fresh connections. */
export async function spread(p: TestProxy, urlPath: string, n = 12): Promise<string[]> {
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const hit = await through(p, urlPath);
    seen.add(hit.instance ?? String(hit.status));
  }
  return [...seen].sort();
}

export async function through(p: TestProxy, urlPath: string): Promise<{ status: number; instance: string | undefined; path: string | undefined }> {
  const res = await fetch(`${p.http}${urlPath}`, { headers: { Connection: 'close' } });
  const text = await res.text();
  if (res.status !== 200) return { status: res.status, instance: undefined, path: undefined };
  const body = JSON.parse(text) as { instance: string; path: string };
  return { status: 200, instance: body.instance, path: body.path };
}

export async function liveConfig(p: TestProxy): Promise<string> {
  return (await callApi(p, 'config')).text;
}

/** Worker PIDs and reload counter: what "HAProxy did not reload" is asserted with. */
export async function haproxyGeneration(p: TestProxy): Promise<string> {
  const info = await p.proxy.haproxy.showProc();
  return `${info.reloads}:${info.workers.join(',')}`;
}

export async function eventually<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (ok(last)) return last;
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}; last value ${JSON.stringify(last)} ${lastErr ? String(lastErr) : ''}`);
}

/** Zombies waiting for init to reap them have exited: they hold no port, socket or memory. */
export function assertDead(pid: number | undefined): void {
  if (pid !== undefined && !isGone(pid)) throw new Error(`process ${pid} is still alive`);
}

export interface RoutedStack {
  readonly consul: ConsulAgent;
  proxy: TestProxy;
  readonly backend: Backend;
  stop(): Promise<void>;
}

/**
 * The common fixture: a Consul dev agent, a proxy, and one service `name` with one instance
 * (`<name>.0`, registered like Registrator) routed at `servicePath`.
 */
export async function startRoutedStack(name: string, servicePath: string, env: Record<string, string> = {}): Promise<RoutedStack> {
  const consul = await startConsul();
  const proxy = await startProxy(consul.address, env);
  const backend = await startBackend(`${name}.0`);
  await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 8080, hostPort: backend.port });
  const res = await callApi(proxy, 'reconfigure', { serviceName: name, servicePath });
  if (res.status !== 200) throw new Error(`fixture reconfigure failed: ${res.text}`);
  const stack: RoutedStack = {
    consul,
    proxy,
    backend,
    async stop() {
      await stack.proxy?.stop();
      await backend.close();
      await stopConsul(consul);
    },
  };
  return stack;
}

/** A proxy run as its own process, the way users run it (`node <PROXY_NODE_FLAGS> dist/src/main.js`). */
export interface ProxyProcess {
  readonly child: ChildProcess;
  /** Everything it wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves once `pattern` shows in its output; fails if it exits or `timeoutMs` passes first. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<void>;
}

export function spawnProxyProcess(env: Record<string, string>): ProxyProcess {
  const child = spawn(process.execPath, proxyArgs(), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  track(child.pid);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return {
    child,
    output: () => out,
    waitFor: async (pattern, timeoutMs = 60_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!pattern.test(out)) {
        if (child.exitCode !== null) throw new Error(`proxy exited: ${out}`);
        if (Date.now() > deadline) throw new Error(`proxy did not start: ${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}
