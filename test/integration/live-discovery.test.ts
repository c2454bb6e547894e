import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import {
  type Backend,
  callApi,
  deregister,
  eventually,
  haproxyGeneration,
  liveConfig,
  registerLikeRegistrator,
  spread,
  startBackend,
  startConsul,
  startProxy,
  stopConsul,
  type TestProxy,
  through,
} from '../helpers/harness.js';

interface Apply {
  kind: string;
  trigger: string;
  durationMs: number;
  reloadBecause?: string[];
}

async function applies(p: TestProxy): Promise<Apply[]> {
  return (await callApi(p, 'status')).body.Applies as Apply[];
}

/**
 * Scaling, crashes and failing checks reach HAProxy from Consul with no API call, and neither
 * they nor a new path-routed service cost a reload.
 */
describe('live discovery and the runtime fast path', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  const backends = new Map<string, Backend>();

  before(async () => {
    consul = await startConsul();
    proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30', SPARE_BACKENDS: '3' });
  });

  after(async () => {
    await proxy?.stop();
    await Promise.all([...backends.values()].map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function up(name: string, index: number, check?: { initial?: string }): Promise<Backend> {
    const b = await startBackend(`${name}.${index}`);
    backends.set(`${name}.${index}`, b);
    await registerLikeRegistrator(consul.address, {
      name,
      container: `${name}.${index}`,
      exposedPort: 8080,
      hostPort: b.port,
      ...(check ? { checkHttp: '/health', checkInterval: '1s', ...(check.initial ? { checkInitialStatus: check.initial } : {}) } : {}),
    });
    return b;
  }

  it('scale up and down through Consul: traffic follows, no API call, no reload', async () => {
    await up('go-demo', 0);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'go-demo', servicePath: '/demo' })).status, 200);
    const gen = await haproxyGeneration(proxy);
    await up('go-demo', 1);
    await up('go-demo', 2);
    await eventually('traffic on all three instances', () => spread(proxy, '/demo'), (s) => s.length === 3);
    await deregister(consul.address, 'host1:go-demo.1:8080');
    await eventually('go-demo.1 out of rotation', () => spread(proxy, '/demo'), (s) => s.join() === 'go-demo.0,go-demo.2');
    assert.equal(await haproxyGeneration(proxy), gen, 'HAProxy did not reload');
    const runtime = (await applies(proxy)).filter((a) => a.trigger.startsWith('consul: go-demo'));
    assert.ok(runtime.length >= 2 && runtime.every((a) => a.kind === 'runtime'), JSON.stringify(runtime));
    // The runtime changes are in the files too, so a reload keeps them.
    // go-demo is the only service with instances so far.
    const config = await liveConfig(proxy);
    assert.equal(config.match(/^ {4}server s\d+ 127\.0\.0\.1:\d+ check {2}# host1:go-demo\.\d:8080$/gm)?.length, 2, config);
    assert.equal((await callApi(proxy, 'reload')).status, 200);
    assert.deepEqual(await spread(proxy, '/demo'), ['go-demo.0', 'go-demo.2']);
  });

  it('every instance gone: 503, and traffic resumes when one comes back', async () => {
    await deregister(consul.address, 'host1:go-demo.0:8080');
    await deregister(consul.address, 'host1:go-demo.2:8080');
    await eventually('503 with no instance', () => through(proxy, '/demo'), (r) => r.status === 503);
    await registerLikeRegistrator(consul.address, { name: 'go-demo', container: 'go-demo.0', exposedPort: 8080, hostPort: backends.get('go-demo.0')?.port ?? 0 });
    await eventually('traffic back on go-demo.0', () => through(proxy, '/demo'), (r) => r.instance === 'go-demo.0');
  });

  it('a failing health check takes an instance out, a passing one puts it back', async () => {
    await up('checked', 0, { initial: 'passing' });
    const b1 = await up('checked', 1, { initial: 'passing' });
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'checked', servicePath: '/checked' })).status, 200);
    await eventually('both instances', () => spread(proxy, '/checked'), (s) => s.length === 2);
    b1.healthy = false;
    await eventually('checked.1 out after its check fails', () => spread(proxy, '/checked'), (s) => s.join() === 'checked.0', 15_000);
    b1.healthy = true;
    await eventually('checked.1 back after its check passes', () => spread(proxy, '/checked'), (s) => s.length === 2, 15_000);
  });

  it('a new path-routed service goes live without a reload, and so does its removal', async () => {
    await up('fresh', 0);
    const gen = await haproxyGeneration(proxy);
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'fresh', servicePath: '/fresh,/fresh-too' });
    assert.equal(res.status, 200);
    assert.equal((await through(proxy, '/fresh/x')).instance, 'fresh.0');
    assert.equal((await through(proxy, '/fresh-too')).instance, 'fresh.0');
    assert.equal(await haproxyGeneration(proxy), gen, 'no reload for a new service');
    const last = (await applies(proxy)).find((a) => a.trigger === 'reconfigure fresh');
    assert.equal(last?.kind, 'runtime');
    assert.equal((await callApi(proxy, 'remove', { serviceName: 'fresh' })).status, 200);
    assert.equal((await through(proxy, '/fresh/x')).status, 503);
    assert.equal(await haproxyGeneration(proxy), gen, 'no reload for a removal');
  });

  it('dry runs show the diff and the kind of apply, and change nothing', async () => {
    const config = await liveConfig(proxy);
    const gen = await haproxyGeneration(proxy);
    await up('dry', 0);
    const runtime = await callApi(proxy, 'reconfigure', { serviceName: 'dry', servicePath: '/dry', dryRun: 'true' });
    assert.equal(runtime.status, 200);
    assert.equal(runtime.body.DryRun, true);
    assert.equal(runtime.body.ApplyKind, 'runtime');
    assert.match(String(runtime.body.Diff), /^\+\/dry dfp-spare-\d+$/m);
    assert.ok((runtime.body.Commands as string[]).some((c) => /^set server dfp-spare-\d+\/s1 addr 127\.0\.0\.1 port \d+$/.test(c)));
    const reload = await callApi(proxy, 'reconfigure', { serviceName: 'dry', servicePath: '^/dry', pathType: 'path_reg', dryRun: 'true' });
    assert.equal(reload.body.ApplyKind, 'reload');
    assert.match(String(reload.body.Diff), /^\+ {4}acl url_dry-be_0 path_reg -- \^\/dry$/m);
    const removal = await callApi(proxy, 'remove', { serviceName: 'checked', dryRun: 'true' });
    assert.equal(removal.body.ApplyKind, 'runtime');
    assert.match(String(removal.body.Diff), /^-\/checked /m);
    assert.equal(await liveConfig(proxy), config);
    assert.equal(await haproxyGeneration(proxy), gen);
    assert.equal((await through(proxy, '/dry')).status, 503);
    assert.equal((await through(proxy, '/checked')).status, 200);
  });

  it('when the spare backends run out, one reload grows the pool', async () => {
    const before = (await applies(proxy)).length;
    for (let i = 0; i < 5; i++) {
      await up(`pool${i}`, 0);
      assert.equal((await callApi(proxy, 'reconfigure', { serviceName: `pool${i}`, servicePath: `/pool${i}` })).status, 200);
      assert.equal((await through(proxy, `/pool${i}`)).instance, `pool${i}.0`);
    }
    // A batch may carry a reconfigure with a Consul change ("2 changes: consul: …, reconfigure pool2").
    const kinds = (await applies(proxy)).slice(before).filter((a) => a.trigger.includes('reconfigure pool')).map((a) => a.kind);
    assert.ok(kinds.includes('reload'), `a reload when spares ran out: ${kinds}`);
    assert.ok(kinds.filter((k) => k === 'runtime').length >= 3, `mostly runtime: ${kinds}`);
  });

  it('status lists the watched services with their instance counts', async () => {
    const status = (await callApi(proxy, 'status')).body;
    const services = status.Services as { ServiceName: string; Instances: number }[];
    assert.equal(services.find((s) => s.ServiceName === 'go-demo')?.Instances, 1);
    assert.equal(services.find((s) => s.ServiceName === 'checked')?.Instances, 2);
    // One node (the dev agent): its query, the change detector's and the checks', whatever the number of services.
    assert.deepEqual(status.Watches, { services: services.length, nodes: 1, nodeWatches: 1, polledNodes: 0, blockingQueries: 3 });
  });
});

describe('CONSUL_PASSING_ONLY=false routes to every registered instance, as the original did', () => {
  it('an instance whose Consul check is critical still gets traffic (HAProxy\'s own check decides)', async () => {
    const consul = await startConsul();
    const proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30', CONSUL_PASSING_ONLY: 'false' });
    const b = await startBackend('any.0');
    try {
      b.healthy = false;
      await registerLikeRegistrator(consul.address, { name: 'any', container: 'any.0', exposedPort: 80, hostPort: b.port, checkHttp: '/health', checkInterval: '1s', checkInitialStatus: 'critical' });
      assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'any', servicePath: '/any' })).status, 200);
      assert.equal((await through(proxy, '/any')).instance, 'any.0');
    } finally {
      await proxy.stop();
      await b.close();
      await stopConsul(consul);
    }
  });
});

describe('nodes past the node-watch budget follow Consul through the change detector', () => {
  it('scaling a service on a node with no blocking query of its own still reaches HAProxy (CONSUL_MAX_WATCHES is ignored)', async () => {
    const consul = await startConsul();
    // Two nodes with more instances than the dev agent's own: they take the two node queries left.
    for (const node of ['big-host', 'big-host-2']) {
      for (let i = 0; i < 3; i++) {
        const res = await fetch(`${consul.address}/v1/catalog/register`, { method: 'PUT', body: JSON.stringify({ Node: node, Address: '127.0.0.9', Service: { ID: `other.${i}`, Service: 'other', Address: '127.0.0.9', Port: 1000 + i } }) });
        assert.equal(res.status, 200);
      }
    }
    // 5 watch connections: 1 for the KV watch of the change log, the catalog's change detector, the
    // checks, and two node queries, which go to the big hosts: the dev agent's node (where the
    // instances are) is polled.
    const proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30', CONSUL_WATCH_CONNECTIONS: '5', CONSUL_MAX_WATCHES: '1' });
    const backends: Backend[] = [];
    try {
      for (const name of ['a', 'b']) {
        const b = await startBackend(`${name}.0`);
        backends.push(b);
        await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: b.port });
        assert.equal((await callApi(proxy, 'reconfigure', { serviceName: name, servicePath: `/${name}` })).status, 200);
      }
      assert.deepEqual((await callApi(proxy, 'status')).body.Watches, { services: 2, nodes: 3, nodeWatches: 2, polledNodes: 1, blockingQueries: 4 });
      const b1 = await startBackend('b.1');
      backends.push(b1);
      await registerLikeRegistrator(consul.address, { name: 'b', container: 'b.1', exposedPort: 80, hostPort: b1.port });
      await eventually('b.1 gets traffic', () => spread(proxy, '/b'), (s) => s.join() === 'b.0,b.1');
      await deregister(consul.address, 'host1:b.0:80');
      await eventually('b.0 leaves', () => spread(proxy, '/b'), (s) => s.join() === 'b.1');
    } finally {
      await proxy.stop();
      await Promise.all(backends.map((b) => b.close()));
      await stopConsul(consul);
    }
  });
});

describe('server slots (regression: servers added at run time were not pooled, half the throughput)', () => {
  it("a departed instance's slot finishes its request in flight, then serves a new instance over fresh connections; a full backend grows with one reload", async () => {
    const consul = await startConsul();
    const proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30' });
    const backends = await Promise.all(['slot.0', 'slot.1', 'slot.2', 'slot.3', 'slot.4', 'slot.5'].map((n) => startBackend(n)));
    const reg = (i: number) => registerLikeRegistrator(consul.address, { name: 'slot', container: `slot.${i}`, exposedPort: 80, hostPort: backends[i]?.port ?? 0 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      await reg(0);
      assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'slot', servicePath: '/slot' })).status, 200);
      assert.match(await liveConfig(proxy), /^ {4}server s1 127\.0\.0\.1:\d+ check {2}# host1:slot\.0:80\n {4}server s2 0\.0\.0\.0:0 disabled check$/m);
      const gen = await haproxyGeneration(proxy);
      // The slot's first health check may still be under way on a loaded machine.
      await eventually('slot.0 serves', () => through(proxy, '/slot'), (r) => r.instance === 'slot.0');
      // HAProxy now holds an idle server-side connection to slot.0, which must not serve slot.1 later.
      for (let i = 0; i < 5; i++) assert.equal((await through(proxy, '/slot')).instance, 'slot.0');
      const inFlight = keepAliveGet(agent, `${proxy.http}/slot/slow`);
      await new Promise((r) => setTimeout(r, 200));
      await deregister(consul.address, 'host1:slot.0:80');
      await eventually('slot.0 out of rotation', () => through(proxy, '/slot'), (r) => r.status === 503);
      assert.equal(await inFlight, 200, 'the request in flight completed');
      await reg(1);
      await eventually('slot.1 serves', () => through(proxy, '/slot'), (r) => r.instance === 'slot.1');
      for (let i = 0; i < 20; i++) assert.equal((await through(proxy, '/slot')).instance, 'slot.1', 'no request reaches the old address');
      assert.match(await liveConfig(proxy), /^ {4}server s1 127\.0\.0\.1:\d+ check {2}# host1:slot\.1:80$/m, 'the freed slot was reused');
      for (const i of [2, 3, 4]) await reg(i);
      await eventually('four instances', () => spread(proxy, '/slot'), (s) => s.length === 4);
      assert.equal(await haproxyGeneration(proxy), gen, 'no reload while slots were free');
      assert.ok((await applies(proxy)).filter((a) => a.trigger.startsWith('consul: slot')).every((a) => a.kind === 'runtime'));
      // The fifth instance does not fit in four slots: one reload grows the backend to eight.
      await reg(5);
      await eventually('five instances', () => spread(proxy, '/slot'), (s) => s.length === 5);
      // Traffic can reach the new worker a moment before the apply is recorded.
      const grown = await eventually('the reload recorded', async () => (await applies(proxy)).find((a) => a.kind === 'reload' && a.trigger.startsWith('consul: slot')), (a) => a !== undefined);
      assert.deepEqual(grown?.reloadBecause, ['backend slot-be_0 (5 instances, 4 server slots)']);
      assert.match(await liveConfig(proxy), /^ {4}server s8 0\.0\.0\.0:0 disabled check$/m);
      assert.deepEqual((await callApi(proxy, 'status')).body.Slots, { used: 5, total: 8 + 16 * 4 });
    } finally {
      agent.destroy();
      await proxy.stop();
      await Promise.all(backends.map((b) => b.close()));
      await stopConsul(consul);
    }
  });
});

function keepAliveGet(agent: http.Agent, url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      })
      .on('error', reject);
  });
}

describe('regression: reconfigures do not leak Consul connection slots', () => {
  it('60 services routed one by one on an agent that allows 80 connections per client', async () => {
    // Each reconfigure used to abort its service's blocking query to re-read it; Consul 1.8 keeps an
    // abandoned blocking query's slot until its wait ends, so every reconfigure leaked one, and a
    // Consul with the default limit (200) failed at about 100 services.
    const consul = await startConsul(80);
    const proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '300', CONSUL_MAX_WATCHES: '40' });
    const b = await startBackend('slot.0');
    try {
      for (let i = 0; i < 60; i++) {
        await registerLikeRegistrator(consul.address, { name: `slot${i}`, container: `slot${i}.0`, exposedPort: 80, hostPort: b.port });
        const res = await callApi(proxy, 'reconfigure', { serviceName: `slot${i}`, servicePath: `/slot${i}` });
        assert.equal(res.status, 200, `service ${i}: ${res.text}`);
      }
      assert.equal((await through(proxy, '/slot59')).instance, 'slot.0');
    } finally {
      await proxy.stop();
      await b.close();
      await stopConsul(consul);
    }
  });
});
