import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConsulAgent } from '../../src/consul/agent.js';
import {
  type Backend,
  CONSUL_BIN,
  TEST_CONSUL_LIMIT,
  callApi,
  eventually,
  registerLikeRegistrator,
  startBackend,
  startConsul,
  startProxy,
  stopConsul,
  type TestProxy,
  tempDir,
  through,
  track,
} from '../helpers/harness.js';

/**
 * Every proxy sharing a Consul and a PROXY_INSTANCE_NAME serves the same services: a restart
 * loses nothing, a change on any replica reaches all, and the replicas can prove they agree.
 */
describe('shared state in Consul KV', () => {
  let consul: ConsulAgent;
  const proxies: TestProxy[] = [];
  const backends: Backend[] = [];

  before(async () => {
    consul = await startConsul();
    for (const name of ['books', 'users']) {
      const b = await startBackend(`${name}.0`);
      backends.push(b);
      await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 8080, hostPort: b.port });
    }
    const blue = await startBackend('users-blue.0');
    backends.push(blue);
    await registerLikeRegistrator(consul.address, { name: 'users-blue', container: 'users-blue.0', exposedPort: 8080, hostPort: blue.port });
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    await Promise.all(backends.map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function proxy(env: Record<string, string> = {}): Promise<TestProxy> {
    const p = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30', ...env });
    proxies.push(p);
    return p;
  }

  async function stop(p: TestProxy): Promise<void> {
    proxies.splice(proxies.indexOf(p), 1);
    await p.stop();
  }

  const model = async (p: TestProxy) => (await callApi(p, 'config', { type: 'json' })).text;

  it('a restarted proxy gets every service and every parameter back, with no API call', async () => {
    const p1 = await proxy();
    const q = 'serviceName=users&aclName=01-users&serviceColor=blue&skipCheck=true&port=8080&servicePath.1=/users&servicePath.2=/u/profile&pathType.2=path&port.2=8081';
    assert.equal((await callApi(p1, 'reconfigure', q)).status, 200);
    assert.equal((await callApi(p1, 'reconfigure', { serviceName: 'books', servicePath: '/books' })).status, 200);
    const before = await model(p1);
    await stop(p1);
    const p2 = await proxy();
    assert.equal((await callApi(p2, 'successfulinitreload')).status, 200);
    assert.equal(await model(p2), before);
    assert.equal((await through(p2, '/users/1')).instance, 'users-blue.0');
    assert.equal((await through(p2, '/u/profile')).instance, 'users-blue.0');
    assert.equal((await through(p2, '/books')).instance, 'books.0');
    assert.match((await callApi(p2, 'config')).text, /server s1 127\.0\.0\.1:\d+ {2}# host1:users-blue\.0:8080\n/, 'skipCheck came back');
  });

  it('proxies with another PROXY_INSTANCE_NAME never see these services', async () => {
    const other = await proxy({ PROXY_INSTANCE_NAME: 'internal' });
    assert.equal(await model(other), '{}');
    assert.equal((await callApi(other, 'reconfigure', { serviceName: 'books', servicePath: '/internal-books' })).status, 200);
    assert.equal((await through(other, '/internal-books')).instance, 'books.0');
    const main = proxies[0] as TestProxy;
    assert.equal((await through(main, '/internal-books')).status, 503);
    await stop(other);
  });

  it('a change on either of two proxies is live on both; wait=all answers once both applied it', async () => {
    const [p1] = proxies as [TestProxy];
    const p2 = await proxy();
    const res = await callApi(p1, 'reconfigure', { serviceName: 'books', servicePath: '/books,/library', wait: 'all' });
    assert.equal(res.status, 200, res.text);
    // wait=all: no polling needed on the other replica.
    assert.equal((await through(p2, '/library')).instance, 'books.0');
    assert.equal((await callApi(p2, 'remove', { serviceName: 'books', wait: 'all' })).status, 200);
    assert.equal((await through(p1, '/books')).status, 503);
    assert.equal(await model(p1), await model(p2));
    const status = (await callApi(p1, 'status')).body.Fleet as { InAgreement: boolean; Replicas: { id: string; Agrees: boolean }[] };
    assert.equal(status.InAgreement, true);
    assert.equal(status.Replicas.length, 2);
  });

  it('distribute=true is accepted and means "live on every replica"', async () => {
    const [p1, p2] = proxies as [TestProxy, TestProxy];
    const res = await callApi(p2, 'reconfigure', { serviceName: 'books', servicePath: '/books', distribute: 'true' });
    assert.equal(res.status, 200);
    assert.match(String(res.body.Message), /Distributed to all instances/);
    assert.equal((await through(p1, '/books')).instance, 'books.0');
  });

  it('a third proxy joining later has the same services before it says it is ready', async () => {
    const [p1] = proxies as [TestProxy];
    const p3 = await proxy({ NO_WAIT_READY: '1' });
    await p3.proxy.whenReady();
    assert.equal(await model(p3), await model(p1));
    assert.equal((await through(p3, '/books')).instance, 'books.0');
    const replicas = ((await callApi(p1, 'status')).body.Fleet as { Replicas: unknown[] }).Replicas;
    assert.equal(replicas.length, 3);
    await stop(p3);
    await eventually('the stopped replica to leave the list', async () => ((await callApi(p1, 'status')).body.Fleet as { Replicas: unknown[] }).Replicas.length, (n) => n === 2);
  });

  it('wait=all times out with a 504 naming the replica that did not apply the change', async () => {
    const [p1] = proxies as [TestProxy];
    // A replica that stopped applying: its report stays at an old KV index while its session lives.
    const session = JSON.parse(await (await fetch(`${consul.address}/v1/session/create`, { method: 'PUT', body: JSON.stringify({ TTL: '30s', Behavior: 'delete' }) })).text()) as { ID: string };
    const stale = { id: 'stuck-replica', api: 'http://127.0.0.9:1', generation: 1, configHash: 'x', specsHash: 'x', kvIndex: 1, ready: true, at: new Date().toISOString() };
    await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/replicas/stuck-replica?acquire=${session.ID}`, { method: 'PUT', body: JSON.stringify(stale) });
    try {
      const started = Date.now();
      const res = await callApi(p1, 'reconfigure', { serviceName: 'books', servicePath: '/books,/stuck', wait: 'all' });
      assert.equal(res.status, 504, res.text);
      assert.deepEqual(res.body.Laggards, ['stuck-replica']);
      assert.equal(res.body.Code, 'DFP_ERR_REPLICAS_LAGGING');
      assert.ok(Date.now() - started < 15_000);
      // Applied here all the same: 504 says who lags, it does not undo.
      assert.equal((await through(p1, '/stuck')).instance, 'books.0');
      const fleet = (await callApi(p1, 'status')).body.Fleet as { InAgreement: boolean };
      assert.equal(fleet.InAgreement, false, 'status flags the drift');
    } finally {
      await fetch(`${consul.address}/v1/session/destroy/${session.ID}`, { method: 'PUT' });
    }
  });

  it('200 concurrent reconfigures on two replicas: none is lost', async () => {
    const [p1, p2] = proxies as [TestProxy, TestProxy];
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => callApi(i % 2 === 0 ? p1 : p2, 'reconfigure', { serviceName: `c${i}`, servicePath: `/c${i}` })),
    );
    assert.deepEqual(
      results.filter((r) => r.status !== 200).map((r) => r.text),
      [],
    );
    for (const p of [p1, p2]) {
      await eventually('all 200 services on every replica', async () => Object.keys(JSON.parse(await model(p)) as object).filter((k) => /^c\d+$/.test(k)).length, (n) => n === 200);
    }
    assert.equal(await model(p1), await model(p2));
    const applies = (await callApi(p1, 'status')).body.ApplyCounts as { reload: number; runtime: number };
    assert.ok(applies.reload + applies.runtime < 150, `changes were batched: ${JSON.stringify(applies)}`);
  });

  it('invalid JSON written into the shared prefix by hand is refused, the rest keeps working', async () => {
    const [p1] = proxies as [TestProxy];
    await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/services/evil`, {
      method: 'PUT',
      body: JSON.stringify({ v: 1, spec: { serviceName: 'evil', aclName: 'evil', skipCheck: false, destinations: [{ index: 0, servicePath: ['/x\n    bind :1'], pathType: 'path_beg', reqMode: 'http' }] } }),
    });
    // A hand edit reaches replicas at their next full read (ha.md); an entry in the change log naming it makes that now.
    const logIt = (slot: number) => fetch(`${consul.address}/v1/kv/docker-flow/_dfp/changes/by-hand/${slot}`, { method: 'PUT', body: JSON.stringify({ v: 1, service: 'evil', prev: 0, at: Date.now() }) });
    await logIt(0);
    await eventually('the bad spec reported', async () => ((await callApi(p1, 'status')).body.Fleet as { InvalidSpecs: string[] }).InvalidSpecs, (l) => l.includes('docker-flow/_dfp/services/evil'));
    assert.doesNotMatch((await callApi(p1, 'config')).text, /bind :1/);
    assert.equal((await through(p1, '/books')).instance, 'books.0');
    await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/services/evil`, { method: 'DELETE' });
    await logIt(1);
    await eventually('the bad spec gone', async () => ((await callApi(p1, 'status')).body.Fleet as { InvalidSpecs: string[] }).InvalidSpecs, (l) => l.length === 0);
  });
});

describe('Consul outage', () => {
  it('serving continues, writes fail with a clear 503, and everything recovers when Consul is back', async () => {
    const first = await startConsul();
    const ports = first.ports;
    const backend = await startBackend('svc.0');
    await registerLikeRegistrator(first.address, { name: 'svc', container: 'svc.0', exposedPort: 80, hostPort: backend.port });
    const p = await startProxy(first.address, { CONSUL_WATCH_WAIT: '30' });
    let second: ConsulAgent | undefined;
    try {
      assert.equal((await callApi(p, 'reconfigure', { serviceName: 'svc', servicePath: '/svc' })).status, 200);
      await first.stop('SIGKILL');
      for (let i = 0; i < 5; i++) assert.equal((await through(p, '/svc')).instance, 'svc.0', 'traffic keeps flowing');
      const started = Date.now();
      const res = await callApi(p, 'reconfigure', { serviceName: 'svc', servicePath: '/svc,/other' });
      assert.equal(res.status, 503);
      assert.equal(res.body.Code, 'DFP_ERR_CONSUL_UNAVAILABLE');
      assert.match(String(res.body.Message), /Consul is unavailable/);
      assert.ok(Date.now() - started < 5000, 'fails fast');
      assert.equal((await through(p, '/other')).status, 503, 'nothing half-applied');
      // A dev agent comes back empty: same address, no KV, no registrations.
      second = await ConsulAgent.start({ bin: CONSUL_BIN, mode: 'dev', dataDir: tempDir(), ports, httpMaxConnsPerClient: TEST_CONSUL_LIMIT });
      track(second.pid);
      // The proxy writes its specs back instead of dropping every route...
      await eventually(
        'the spec written back to the empty Consul',
        async () => (await fetch(`${second?.address}/v1/kv/docker-flow/_dfp/services/svc`)).status,
        (s) => s === 200,
        20_000,
      );
      // ...and routes again as soon as the instance is registered again.
      await registerLikeRegistrator(second.address, { name: 'svc', container: 'svc.0', exposedPort: 80, hostPort: backend.port });
      await eventually('traffic after re-registration', () => through(p, '/svc'), (r) => r.instance === 'svc.0', 20_000);
      assert.equal((await callApi(p, 'reconfigure', { serviceName: 'svc', servicePath: '/svc,/other' })).status, 200);
      assert.equal((await through(p, '/other')).instance, 'svc.0');
    } finally {
      await p.stop();
      await backend.close();
      if (second) await stopConsul(second);
    }
  });
});

describe('upgrading in place from the original Docker Flow Proxy', () => {
  it("services stored in the original's per-attribute KV layout are restored and migrated", async () => {
    const consul = await startConsul();
    const backend = await startBackend('go-demo.0');
    const put = (key: string, value: string) => fetch(`${consul.address}/v1/kv/docker-flow/${key}`, { method: 'PUT', body: value });
    await put('go-demo/path', '/demo,/demo2');
    await put('go-demo/pathtype', 'path_beg');
    await put('go-demo/skipcheck', 'false');
    await put('service/go-demo', 'swarm');
    await put('web/path', '/');
    await put('web/domain', 'example.com');
    // A raw template cannot be imported: that service is skipped with a warning, not half-restored.
    await put('tpl/path', '/tpl');
    await put('tpl/consultemplatefepath', '/cfg/x.ctmpl');
    await registerLikeRegistrator(consul.address, { name: 'go-demo', container: 'go-demo.0', exposedPort: 8080, hostPort: backend.port });
    const p = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30' });
    try {
      assert.equal((await through(p, '/demo2/x')).instance, 'go-demo.0');
      const model = JSON.parse((await callApi(p, 'config', { type: 'json' })).text) as Record<string, { ServiceDest: { ServiceDomain: string[] }[] }>;
      assert.deepEqual(Object.keys(model), ['go-demo', 'web']);
      assert.deepEqual(model.web?.ServiceDest[0]?.ServiceDomain, ['example.com'], 'the legacy domain key is read');
      const migrated = await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/services/go-demo`);
      assert.equal(migrated.status, 200, 'written in the new layout');
      assert.equal((await callApi(p, 'remove', { serviceName: 'go-demo' })).status, 200);
      assert.equal((await fetch(`${consul.address}/v1/kv/docker-flow/go-demo/path`)).status, 404, 'remove deletes the legacy keys too');
    } finally {
      await p.stop();
      await backend.close();
      await stopConsul(consul);
    }
  });
});

describe('replicas with the same settings converge to byte-identical configs', () => {
  it('after a reload, whatever order the replicas saw changes in', async () => {
    const consul = await startConsul();
    const stateA = tempDir();
    const stateB = tempDir();
    // Same ports are impossible on one host, so compare the configs with ports and paths masked.
    const env = { CONSUL_WATCH_WAIT: '30' };
    const a = await startProxy(consul.address, { ...env, STATE_DIR: stateA });
    const b = await startProxy(consul.address, { ...env, STATE_DIR: stateB });
    try {
      // Services added at run time sit on spare backends whose numbers depend on each replica's history.
      for (const [i, p] of [a, b, a].entries()) {
        assert.equal((await callApi(p, 'reconfigure', { serviceName: `s${i}`, servicePath: `/s${i}` })).status, 200);
      }
      assert.equal((await callApi(b, 'reconfigure', { serviceName: 'svc', servicePath: '/svc', wait: 'all' })).status, 200);
      // A reload (for any reason) gives every backend its canonical name.
      for (const p of [a, b]) assert.equal((await callApi(p, 'reload')).status, 200);
      // The config plus the route map, which says which backend each path goes to.
      const masked = async (p: TestProxy) =>
        `${(await callApi(p, 'config')).text}\n${readFileSync(path.join(p.stateDir, 'routes-prefix.map'), 'utf8')}`.replaceAll(p.stateDir, 'STATE').replace(/bind \*:\d+/g, 'bind *:PORT');
      const onSpare = /^\/\S+ dfp-spare-/m;
      const [x] = await eventually('identical configs, every service on its canonical backend', async () => [await masked(a), await masked(b)], ([x, y]) => x === y && !onSpare.test(x ?? ''), 15_000);
      assert.match(x ?? '', /^\/svc svc-be_0$/m);
      assert.match(x ?? '', /^\/s0 s0-be_0$/m);
    } finally {
      await a.stop();
      await b.stop();
      await stopConsul(consul);
    }
  });
});
