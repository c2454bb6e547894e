import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import {
  type Backend,
  callApi,
  deregister,
  haproxyGeneration,
  liveConfig,
  registerLikeRegistrator,
  startBackend,
  startConsul,
  startProxy,
  stopConsul,
  type TestProxy,
  through,
} from '../helpers/harness.js';

/** The README walkthrough, on a real Consul dev agent and a real HAProxy. */
describe('walkthrough: reconfigure, scale, remove', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  const backends: Backend[] = [];

  before(async () => {
    consul = await startConsul();
    proxy = await startProxy(consul.address);
  });

  after(async () => {
    await proxy?.stop();
    await Promise.all(backends.map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function instance(name: string, index: number): Promise<Backend> {
    const b = await startBackend(`${name}.${index}`);
    backends.push(b);
    await registerLikeRegistrator(consul.address, { name, container: `${name}.${index}`, exposedPort: 8080, hostPort: b.port });
    return b;
  }

  it('routes /api/v1/books to books-ms once reconfigure answers', async () => {
    await instance('books-ms', 0);
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 200);
    assert.deepEqual(
      { Status: res.body.Status, Message: res.body.Message, ServiceName: res.body.ServiceName, ServicePath: res.body.ServicePath },
      { Status: 'OK', Message: '', ServiceName: 'books-ms', ServicePath: '/api/v1/books' },
    );
    // No retry loop: the answer means the route is live.
    const hit = await through(proxy, '/api/v1/books');
    assert.equal(hit.status, 200);
    assert.equal(hit.instance, 'books-ms.0');
    assert.equal(hit.path, '/api/v1/books');
    assert.equal((await through(proxy, '/api/v1/books/123')).instance, 'books-ms.0');
    assert.equal((await through(proxy, '/other')).status, 503);
  });

  it('after scaling to 3 and reconfiguring, 30 requests reach all 3 instances', async () => {
    await instance('books-ms', 1);
    await instance('books-ms', 2);
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 200);
    const seen = new Map<string, number>();
    for (let i = 0; i < 30; i++) {
      const hit = await through(proxy, '/api/v1/books');
      assert.equal(hit.status, 200);
      seen.set(hit.instance ?? '', (seen.get(hit.instance ?? '') ?? 0) + 1);
    }
    assert.deepEqual([...seen.keys()].sort(), ['books-ms.0', 'books-ms.1', 'books-ms.2']);
    // Round robin: an even spread.
    for (const n of seen.values()) assert.equal(n, 10);
    // Three server slots hold the instances (the rest of the config's slots are free).
    const servers = (await liveConfig(proxy)).split('\n').filter((l) => /^ {4}server s\d+ 127\.0\.0\.1:/.test(l));
    assert.equal(servers.length, 3);
    assert.ok(servers.every((l) => / check {2}# host1:books-ms\.\d:8080$/.test(l)), 'health checks are on');
  });

  it('the same reconfigure again changes nothing and does not reload', async () => {
    const before = await haproxyGeneration(proxy);
    const config = await liveConfig(proxy);
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 200);
    assert.equal(await haproxyGeneration(proxy), before);
    assert.equal(await liveConfig(proxy), config);
  });

  it('serves two services side by side, more specific paths first', async () => {
    await instance('users-ms', 0);
    await instance('api-root', 0);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'users-ms', servicePath: '/api/v1/users,/api/v1/books/special' })).status, 200);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'api-root', servicePath: '/api' })).status, 200);
    assert.equal((await through(proxy, '/api/v1/users/7')).instance, 'users-ms.0');
    assert.match((await through(proxy, '/api/v1/books/1')).instance ?? '', /^books-ms\./);
    // Longer prefixes win whatever the order of reconfigure calls.
    assert.equal((await through(proxy, '/api/v1/books/special/1')).instance, 'users-ms.0');
    assert.equal((await through(proxy, '/api/v2')).instance, 'api-root.0');
  });

  it('a service owning / is the catch-all, after every other route', async () => {
    await instance('web', 0);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'web', servicePath: '/' })).status, 200);
    assert.equal((await through(proxy, '/anything')).instance, 'web.0');
    assert.equal((await through(proxy, '/api/v1/users')).instance, 'users-ms.0');
    assert.equal((await callApi(proxy, 'remove', { serviceName: 'web' })).status, 200);
    assert.equal((await through(proxy, '/anything')).status, 503);
  });

  it('reload, reload?recreate=true and the self-test endpoints', async () => {
    const before = (await callApi(proxy, 'status')).body.ApplyCounts as { reload: number };
    assert.equal((await callApi(proxy, 'reload')).status, 200);
    assert.equal((await callApi(proxy, 'reload', { recreate: 'true' })).status, 200);
    const after = (await callApi(proxy, 'status')).body;
    assert.equal((after.ApplyCounts as { reload: number }).reload, before.reload + 2, 'an explicit reload always reloads');
    assert.ok((after.Applies as { trigger: string }[]).some((a) => a.trigger === 'reload recreate'));
    assert.match((await through(proxy, '/api/v1/users/7')).instance ?? '', /^users-ms\./, 'routes survive both');
    const listener = await callApi(proxy, 'reload', { fromListener: 'true' });
    assert.equal(listener.status, 400);
    assert.equal(listener.body.Parameter, 'fromListener');
    for (const [p, m] of [['/v1/test', 'Test v1'], ['/v2/test', 'Test v2']]) {
      assert.deepEqual(await (await fetch(`${proxy.api.replace('/v1/docker-flow-proxy', '')}${p}`)).json(), { Status: 'OK', Message: m });
    }
  });

  it('config?type=json lists the services by name', async () => {
    const res = await callApi(proxy, 'config', { type: 'json' });
    assert.equal(res.status, 200);
    assert.deepEqual(Object.keys(res.body).sort(), ['api-root', 'books-ms', 'users-ms']);
    assert.match(res.text, /^\{"api-root":/);
  });

  it('remove takes the route away (503) and removing again changes nothing', async () => {
    const res = await callApi(proxy, 'remove', { serviceName: 'users-ms' });
    assert.equal(res.status, 200);
    assert.equal(res.body.Status, 'OK');
    assert.equal((await through(proxy, '/api/v1/users')).instance, 'api-root.0', 'falls back to the shorter prefix');
    assert.equal((await callApi(proxy, 'remove', { serviceName: 'api-root' })).status, 200);
    assert.equal((await through(proxy, '/api/v1/users')).status, 503);
    const gen = await haproxyGeneration(proxy);
    const again = await callApi(proxy, 'remove', { serviceName: 'api-root' });
    assert.equal(again.status, 200);
    assert.match(String(again.body.Message), /not configured/);
    assert.equal(await haproxyGeneration(proxy), gen);
  });

  it('a scaled-down service keeps its route; with no instance left it answers 503', async () => {
    await deregister(consul.address, 'host1:books-ms.1:8080');
    await deregister(consul.address, 'host1:books-ms.2:8080');
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' })).status, 200);
    for (let i = 0; i < 4; i++) assert.equal((await through(proxy, '/api/v1/books')).instance, 'books-ms.0');
    await deregister(consul.address, 'host1:books-ms.0:8080');
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 200);
    assert.match(String(res.body.Message), /no healthy instance/);
    assert.equal((await through(proxy, '/api/v1/books')).status, 503);
  });

  it('remove by aclName alone, and replicas=0 as a remove', async () => {
    await instance('blue', 0);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'blue', servicePath: '/blue', aclName: '01-blue' })).status, 200);
    assert.equal((await through(proxy, '/blue')).instance, 'blue.0');
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'blue', servicePath: '/blue', replicas: '0' })).status, 200);
    assert.equal((await through(proxy, '/blue')).status, 503);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'blue', servicePath: '/blue', aclName: '01-blue' })).status, 200);
    assert.equal((await callApi(proxy, 'remove', { serviceName: 'not-by-this-name', aclName: '01-blue' })).body.ServiceName, 'blue');
    assert.equal((await through(proxy, '/blue')).status, 503);
  });
});
