import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort } from '../../src/util/ports.js';
import { isAlive, waitForExit } from '../../src/util/process.js';
import { type Backend, registerLikeRegistrator, spawnProxyProcess, startBackend, tempDir, track } from '../helpers/harness.js';

/**
 * `npm start` as a newcomer runs it: no CONSUL_ADDRESS, so the proxy brings up its own Consul
 * server with data under STATE_DIR, and stops everything on SIGTERM/SIGINT.
 */
describe('the proxy process with no CONSUL_ADDRESS', () => {
  const stateDir = tempDir();
  let backend: Backend;
  let apiPort: number;
  let httpPort: number;

  const children: ChildProcess[] = [];

  after(async () => {
    // A failed assertion must not leave a proxy running (the test process would wait for it).
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await waitForExit(c.pid ?? 0, 20_000);
      }
    }
    await backend?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  /**
   * Another test process can bind the API port between freePort() and the proxy's listen (the
   * suite runs two files at once): then the proxy stops at start-up, and is started again on
   * another port. Nothing else counts as a reason to retry.
   */
  async function launch(attempt = 1): Promise<{ child: ChildProcess; consul: string; output: () => string }> {
    try {
      return await launchOnce();
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE: address already in use 127\.0\.0\.1:\d+/.test(String(err)) || !String(err).includes(`:${apiPort}`)) throw err;
      apiPort = await freePort();
      return launch(attempt + 1);
    }
  }

  async function launchOnce(): Promise<{ child: ChildProcess; consul: string; output: () => string }> {
    const proxy = spawnProxyProcess({ CONSUL_ADDRESS: '', STATE_DIR: stateDir, PORT: String(apiPort), IP: '127.0.0.1', DEFAULT_PORTS: String(httpPort), LOG_LEVEL: 'info' });
    children.push(proxy.child);
    await proxy.waitFor(/ready: serving /);
    const { child, output } = proxy;
    const out = output();
    const consul = /CONSUL_ADDRESS=(http:\/\/\S+)/.exec(out)?.[1];
    assert.ok(consul, `the local Consul address is printed: ${out}`);
    return { child, consul, output };
  }

  /** The exit code, once Node has seen the exit (waitForExit may see the zombie first). */
  async function exitCode(child: ChildProcess): Promise<number | null> {
    if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    return child.exitCode;
  }

  const pids = () => ({
    haproxy: Number(readFileSync(path.join(stateDir, 'haproxy.pid'), 'utf8')),
    consul: Number(readFileSync(path.join(stateDir, 'consul', 'dfp-consul.pid'), 'utf8')),
  });

  it('starts a local Consul, serves the walkthrough, and stops everything on SIGTERM', async () => {
    apiPort = await freePort();
    httpPort = await freePort();
    backend = await startBackend('books-ms.0');
    const { child, consul } = await launch();
    await registerLikeRegistrator(consul, { name: 'books-ms', container: 'books-ms.0', exposedPort: 8080, hostPort: backend.port });
    const res = await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books`);
    assert.deepEqual(
      await res.json().then((b) => {
        const { Status, Message, ServiceName, ServicePath } = b as Record<string, unknown>;
        return { Status, Message, ServiceName, ServicePath };
      }),
      { Status: 'OK', Message: '', ServiceName: 'books-ms', ServicePath: '/api/v1/books' },
    );
    const hit = await fetch(`http://127.0.0.1:${httpPort}/api/v1/books`);
    assert.equal(hit.status, 200);
    assert.equal(((await hit.json()) as { instance: string }).instance, 'books-ms.0');
    const { haproxy, consul: consulPid } = pids();
    assert.ok(isAlive(haproxy) && isAlive(consulPid));
    child.kill('SIGTERM');
    assert.ok(await waitForExit(child.pid ?? 0, 20_000), 'proxy exits');
    assert.equal(await exitCode(child), 0);
    assert.ok(await waitForExit(haproxy, 5000), 'HAProxy stopped');
    assert.ok(await waitForExit(consulPid, 5000), 'local Consul stopped');
  });

  it('with no CONSUL_ADDRESS and no Consul binary, start-up stops at once naming CONSUL_ADDRESS', async () => {
    const dir = tempDir();
    const proxy = spawnProxyProcess({ CONSUL_ADDRESS: '', CONSUL_BIN: path.join(dir, 'no-consul-here'), STATE_DIR: dir, PORT: '0', IP: '127.0.0.1', DEFAULT_PORTS: String(await freePort()) });
    children.push(proxy.child);
    assert.equal(await exitCode(proxy.child), 1);
    const out = proxy.output();
    assert.match(out, /cannot start: CONSUL_ADDRESS: not set, and there is no Consul binary at \S+no-consul-here \(CONSUL_BIN\)/);
    // A real or a JSON-escaped line break before `at`: a stack trace in either log format.
    assert.doesNotMatch(out, /(\n|\\n)\s+at /, 'a settings error, not a stack trace');
    rmSync(dir, { recursive: true, force: true });
  });

  it('a second start reuses the local Consul data; SIGINT stops it too', async () => {
    const { child, consul } = await launch();
    const res = await fetch(`${consul}/v1/catalog/service/books-ms`);
    const entries = (await res.json()) as unknown[];
    assert.equal(entries.length, 1, 'the registration persisted under STATE_DIR/consul');
    // The route came back from Consul KV, with no API call.
    const hit = await fetch(`http://127.0.0.1:${httpPort}/api/v1/books`);
    assert.equal(((await hit.json()) as { instance: string }).instance, 'books-ms.0');
    const { haproxy, consul: consulPid } = pids();
    child.kill('SIGINT');
    assert.ok(await waitForExit(child.pid ?? 0, 20_000));
    assert.equal(await exitCode(child), 0);
    assert.ok(await waitForExit(haproxy, 5000));
    assert.ok(await waitForExit(consulPid, 5000));
  });

  it('after a SIGKILL of the proxy, the next start takes over the HAProxy it left serving, replaces the local Consul and restores the routes', async () => {
    const first = await launch();
    // Every parameter must survive the kill, not just the route.
    const q = 'serviceName=books-ms&aclName=00-books&skipCheck=true&servicePath.1=/api/v1/books&servicePath.2=/books/health&pathType.2=path&port.2=8081';
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/reconfigure?${q}`)).status, 200);
    const modelBefore = await (await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/config?type=json`)).text();
    const left = pids();
    first.child.kill('SIGKILL');
    await waitForExit(first.child.pid ?? 0, 5000);
    assert.ok(isAlive(left.haproxy), 'HAProxy outlives a SIGKILLed parent');
    track(left.haproxy);
    track(left.consul);
    const second = await launch();
    assert.equal(pids().haproxy, left.haproxy, 'the HAProxy master left serving was taken over, not replaced');
    assert.ok(isAlive(left.haproxy));
    assert.ok(await waitForExit(left.consul, 5000), 'the orphaned Consul was stopped');
    assert.equal(/CONSUL_ADDRESS=(\S+)/.exec(second.output())?.[1], first.consul, 'the local Consul keeps its address');
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/ping`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/successfulinitreload`)).status, 200);
    const hit = await fetch(`http://127.0.0.1:${httpPort}/books/health`);
    assert.equal(((await hit.json()) as { instance: string }).instance, 'books-ms.0', 'kill -9 and restart: the routes are back');
    assert.equal(await (await fetch(`http://127.0.0.1:${apiPort}/v1/docker-flow-proxy/config?type=json`)).text(), modelBefore, 'with every parameter');
    const now = pids();
    assert.equal(now.haproxy, left.haproxy);
    second.child.kill('SIGTERM');
    assert.ok(await waitForExit(second.child.pid ?? 0, 20_000));
    assert.ok(await waitForExit(now.haproxy, 5000));
    assert.ok(await waitForExit(now.consul, 5000));
  });
});
