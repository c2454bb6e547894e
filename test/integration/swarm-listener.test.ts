import assert from 'node:assert/strict';
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { startDns } from '../helpers/dns.js';
import { type Backend, callApi, eventually, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/**
 * Issue 10, AC-22: the Docker Flow Swarm Listener. A stub serves get-services (refusing the first
 * tries, as a listener still starting would) and counts notify-services calls.
 */
describe('Swarm Listener (LISTENER_ADDRESS)', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let stub: Server;
  const backends: Backend[] = [];
  const calls = { getServices: 0, notifyServices: 0 };
  // Exactly as the listener lists them: its own parameters beside the labels.
  const SERVICES = [
    { serviceName: 'go-demo', replicas: '2', distribute: 'true', notify: 'true', servicePath: '/demo', port: '8080', scrapePort: '9100', nodeInfo: '[{"Name":"n1"}]' },
    { serviceName: 'books', replicas: '1', servicePath: '/books' },
    { serviceName: 'gone', replicas: '0', servicePath: '/gone' },
    { serviceName: 'broken', replicas: '1' },
  ];

  before(async () => {
    consul = await startConsul();
    for (const name of ['go-demo', 'books']) {
      const b = await startBackend(`${name}.0`);
      backends.push(b);
      await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: b.port });
    }
    stub = http.createServer((req, res) => {
      if (req.url === '/v1/docker-flow-swarm-listener/get-services') {
        calls.getServices++;
        if (calls.getServices < 3) {
          res.writeHead(503).end('starting');
          return;
        }
        res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(SERVICES));
        return;
      }
      if (req.url === '/v1/docker-flow-swarm-listener/notify-services') {
        calls.notifyServices++;
        res.writeHead(200).end('OK');
        return;
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
    const port = (stub.address() as AddressInfo).port;
    proxy = await startProxy(consul.address, { LISTENER_ADDRESS: `127.0.0.1:${port}`, RELOAD_INTERVAL: '100' });
  });

  after(async () => {
    await proxy?.stop();
    for (const b of backends) await b.close();
    await new Promise<void>((resolve) => stub?.close(() => resolve()));
    if (consul) await stopConsul(consul);
  });

  it("retries get-services until it answers, routes its services before it is ready, in one apply", async () => {
    assert.equal(calls.getServices, 3, 'two refusals, then the list');
    assert.equal((await through(proxy, '/demo')).instance, 'go-demo.0');
    assert.equal((await through(proxy, '/books')).instance, 'books.0');
    assert.equal((await through(proxy, '/gone')).status, 503, 'replicas=0 is a remove');
    const model = (await callApi(proxy, 'config', { type: 'json' })).body;
    assert.deepEqual(Object.keys(model).sort(), ['books', 'go-demo'], 'the one that can never work (no path, no domain) is skipped');
    const applies = (await callApi(proxy, 'status')).body.Applies as { kind: string; trigger: string }[];
    // HAProxy's start (the empty config), then one reload for every service at once.
    assert.deepEqual(
      applies.map((a) => `${a.kind} ${a.trigger}`),
      ['reload start', 'reload start-up restore: 2 changed, 0 removed'],
    );
  });

  it('notifications as the listener sends them: unknown parameters ignored, retries cost no reload, 409 for one that can never work', async () => {
    const notification = { serviceName: 'go-demo', replicas: '3', distribute: 'true', notify: 'true', servicePath: '/demo', port: '8080', scrapePort: '9100' };
    const before = (await callApi(proxy, 'status')).body.ApplyCounts as { reload: number };
    for (let i = 0; i < 3; i++) assert.equal((await callApi(proxy, 'reconfigure', notification)).status, 200);
    const after = (await callApi(proxy, 'status')).body.ApplyCounts as { reload: number };
    assert.ok(after.reload - before.reload <= 1, `at most one reload for three identical notifications (${after.reload - before.reload})`);
    const never = await callApi(proxy, 'reconfigure', { serviceName: 'broken', replicas: '1', distribute: 'true' });
    assert.equal(never.status, 409, never.text);
  });

  it('reload?fromListener=true asks the listener to send everything again', async () => {
    const res = await callApi(proxy, 'reload', { fromListener: 'true' });
    assert.equal(res.status, 200, res.text);
    assert.equal(calls.notifyServices, 1);
  });
});

/** DISCOVERY=dns with the listener: Swarm services Consul does not know go to their DNS names. */
describe('Swarm Listener with DISCOVERY=dns', () => {
  it('the start-up pull routes an unregistered service by its name and a registered one by Consul', async () => {
    const consul = await startConsul();
    const task = await startBackend('stack_api.task');
    const books = await startBackend('books.0');
    const dns = await startDns(new Map([['stack_api', '127.0.0.1']]));
    await registerLikeRegistrator(consul.address, { name: 'books', container: 'books.0', exposedPort: 80, hostPort: books.port });
    const listed = [
      { serviceName: 'stack_api', replicas: '2', servicePath: '/api', port: String(task.port) },
      { serviceName: 'books', replicas: '1', servicePath: '/books', port: '80' },
    ];
    const stub = http.createServer((req, res) => {
      if (req.url === '/v1/docker-flow-swarm-listener/get-services') res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(listed));
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
    let proxy: TestProxy | undefined;
    try {
      proxy = await startProxy(consul.address, {
        LISTENER_ADDRESS: `127.0.0.1:${(stub.address() as AddressInfo).port}`,
        DISCOVERY: 'dns',
        RESOLVERS: `nameserver t 127.0.0.1:${dns.port}`,
      });
      const model = (await callApi(proxy, 'config', { type: 'json' })).body as Record<string, Record<string, unknown>>;
      assert.equal(model.stack_api?.DiscoveryType, 'dns');
      assert.equal(model.books?.DiscoveryType, '');
      const p = proxy;
      await eventually('stack_api served through DNS', async () => (await through(p, '/api')).instance, (i) => i === 'stack_api.task', 15_000);
      assert.equal((await through(proxy, '/books')).instance, 'books.0');
    } finally {
      await proxy?.stop();
      await new Promise<void>((resolve) => stub.close(() => resolve()));
      await dns.close();
      await task.close();
      await books.close();
      await stopConsul(consul);
    }
  });
});

