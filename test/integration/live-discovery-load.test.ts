import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { CertManager } from '../../src/certs/manager.js';
import type { ConsulAgent } from '../../src/consul/agent.js';
import type { ConsulBudgetName } from '../../src/consul/client.js';
import { type ContainerPort, registratorBody } from '../../src/consul/registrator.js';
import type { Fleet } from '../../src/fleet.js';
import { type Backend, callApi, eventually, spread, startBackend, startConsulDefaultLimits, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/**
 * Issue 9: Consul's load is bounded by nodes, not services. Against an agent with Consul's
 * default limits (200 connections per client address), a proxy routing 300 services holds at most
 * 10 connections to it, sends nothing while nothing changes but blocking-query renewals, and a
 * scale event of one service costs a few requests, none of them about the other services.
 */

const SERVICES = 300;
const CONCURRENCY = 8;

/** Established TCP connections from this process (the proxy runs in it) to `port`. */
function connectionsTo(port: number): number {
  const mine = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m?.[1]) mine.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  let n = 0;
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const remotePort = Number.parseInt(f[2]?.split(':')[1] ?? '', 16);
      if (remotePort === port && f[3] === '01' && mine.has(f[9] ?? '')) n++;
    }
  }
  return n;
}

/** Registers like Registrator on a connection of its own that closes, so only the proxy's connections stay. */
function registerClosing(consul: string, port: ContainerPort): Promise<void> {
  const { body } = registratorBody(port);
  return new Promise((resolve, reject) => {
    const req = http.request(`${consul}/v1/agent/service/register`, { method: 'PUT', agent: false, headers: { Connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`register ${port.name}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

async function inParallel<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: n }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
    }),
  );
}

describe(`${SERVICES} services on an agent with Consul's default limits`, () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let backend: Backend;
  let scaled: Backend;
  const requests: { path: string; budget: ConsulBudgetName; at: number }[] = [];
  const port = () => Number(new URL(consul.address).port);
  const names = Array.from({ length: SERVICES }, (_, i) => `svc${i + 1}`);

  before(async () => {
    consul = await startConsulDefaultLimits();
    backend = await startBackend('svc.0');
    scaled = await startBackend('svc300.1');
    proxy = await startProxy(consul.address);
    proxy.proxy.consul.onRequest = (path, budget) => requests.push({ path, budget, at: Date.now() });
    await inParallel(names, CONCURRENCY, (name) => registerClosing(consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: backend.port }));
  });

  after(async () => {
    await proxy?.stop();
    await backend?.close();
    await scaled?.close();
    if (consul) await stopConsul(consul);
  });

  it(`routing them with ${CONCURRENCY} concurrent API clients holds at most 10 connections to Consul`, async () => {
    let max = 0;
    const sampler = setInterval(() => {
      max = Math.max(max, connectionsTo(port()));
    }, 5);
    try {
      await inParallel(names, CONCURRENCY, async (name) => {
        const res = await callApi(proxy, 'reconfigure', { serviceName: name, servicePath: `/${name}` });
        assert.equal(res.status, 200, `${name}: ${res.text}`);
      });
    } finally {
      clearInterval(sampler);
    }
    max = Math.max(max, connectionsTo(port()));
    console.log(`# connections to Consul while routing ${SERVICES} services: at most ${max}; watcher ${JSON.stringify(proxy.proxy.consul.stats())}`);
    assert.ok(max >= 1 && max <= 10, `at most 10 connections, saw ${max}`);
    // One direct read per reconfigure: what it found becomes the watch's last report, so there is no
    // second read to cover a race unless the watch reported the service during the call.
    const reads = new Map<string, number>();
    for (const r of requests) {
      const m = /^\/v1\/health\/service\/([^?]+)/.exec(r.path);
      if (m?.[1]) reads.set(m[1], (reads.get(m[1]) ?? 0) + 1);
    }
    const readTwice = names.filter((n) => (reads.get(n) ?? 0) > 1);
    console.log(`# direct reads: ${[...reads.values()].reduce((a, b) => a + b, 0)} for ${SERVICES} reconfigures; read more than once: ${readTwice.length}`);
    assert.ok(names.every((n) => reads.has(n)), 'every reconfigure read its service');
    // The certificates' prefix is not read on the specs' changes: the change log names none, and
    // nothing blocks on that prefix (the certificates follow the log, certs/manager.ts).
    const certWatch = requests.filter((r) => r.path.startsWith('/v1/kv/docker-flow/_dfp/certs/'));
    // It is read whole only when the log leaves a doubt for the certificates too: a full read of the
    // specs, or a ring wrapped between two reads (300 writes of one replica, 8 at a time).
    const fleetReads = (proxy.proxy as unknown as { fleet: Fleet }).fleet.reads;
    const certReads = (proxy.proxy as unknown as { certs: CertManager }).certs.reads;
    console.log(`# reads of the specs ${JSON.stringify(fleetReads)}, of the certificates ${JSON.stringify(certReads)}`);
    assert.ok(certWatch.length <= certReads.full && certReads.full <= fleetReads.full, `${certWatch.length} reads of the certificates' prefix; specs ${JSON.stringify(fleetReads)}, certificates ${JSON.stringify(certReads)}`);
    assert.ok(readTwice.length <= SERVICES / 20, `read more than once: ${readTwice.slice(0, 10).join(', ')}`);
    assert.equal((await through(proxy, `/svc${SERVICES}`)).instance, 'svc.0');
    assert.equal((await through(proxy, '/svc1')).instance, 'svc.0');
  });

  it('no request reaches Consul while nothing changes, apart from renewals', async () => {
    await new Promise((r) => setTimeout(r, 1500)); // the last applies' follow-ups
    const from = requests.length;
    await new Promise((r) => setTimeout(r, 4000));
    const quiet = requests.slice(from);
    // Blocking queries renew every CONSUL_WATCH_WAIT (300 s); the replica report's session every 3 s.
    const others = quiet.filter((r) => r.budget !== 'watch' && !r.path.startsWith('/v1/session/renew/'));
    const byPath = new Map<string, number>();
    for (const r of quiet) byPath.set(r.path.split('?')[0] ?? '', (byPath.get(r.path.split('?')[0] ?? '') ?? 0) + 1);
    console.log(`# requests in 4 quiet seconds: ${[...byPath].map(([path, n]) => `${n} x ${path}`).join(', ') || 'none'}`);
    assert.deepEqual(
      others.slice(0, 5).map((r) => `${r.budget} ${r.path}`),
      [],
      `${others.length} requests`,
    );
    assert.ok(connectionsTo(port()) <= 10);
  });

  it(`a scale event of service #${SERVICES} costs a few requests, none about the others`, async () => {
    const from = requests.length;
    const started = Date.now();
    await registerClosing(consul.address, { name: `svc${SERVICES}`, container: `svc${SERVICES}.1`, exposedPort: 80, hostPort: scaled.port });
    await eventually('the new instance gets traffic', () => spread(proxy, `/svc${SERVICES}`, 8), (s) => s.includes('svc300.1'));
    const live = Date.now() - started;
    await new Promise((r) => setTimeout(r, 300));
    // Discovery's requests; the fleet's (replica report, KV watches) are the previous test's business.
    const spent = requests.slice(from).filter((r) => !r.path.startsWith('/v1/kv/') && !r.path.startsWith('/v1/session/'));
    console.log(`# scale event live after ${live} ms (traffic polled); discovery's requests: ${spent.map((r) => `${r.budget} ${r.path}`).join(' | ')}`);
    const others = spent.filter((r) => /\/v1\/(health|catalog)\/service\//.test(r.path) && !r.path.includes(`/svc${SERVICES}`));
    assert.deepEqual(others, [], 'no other service is read');
    // The node query's answer and its renewal, and fresh checks for the new instance.
    assert.ok(spent.length <= 4, `${spent.length} requests`);
  });
});
