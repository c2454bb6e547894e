import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { loadSettings } from '../../src/config/settings.js';
import { DfpError } from '../../src/errors.js';
import { FlowProxy } from '../../src/proxy.js';
import { createLogger } from '../../src/util/log.js';
import { type Backend, callApi, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, tempDir, type TestProxy, through } from '../helpers/harness.js';

/** Issue 10: services from the environment, a second source beside the API and Consul KV. */
describe('services from the environment (DFP_SERVICE_*)', () => {
  let consul: ConsulAgent;
  let envProxy: TestProxy;
  let apiProxy: TestProxy;
  const backends: Backend[] = [];
  const ENV = {
    DFP_SERVICE_1_SERVICE_NAME: 'books',
    DFP_SERVICE_1_SERVICE_PATH: '/books',
    DFP_SERVICE_2_SERVICE_NAME: 'shop',
    DFP_SERVICE_2_SERVICE_PATH: '/shop',
  };
  const status = async (p: TestProxy) =>
    (await callApi(p, 'status')).body as { Services: { ServiceName: string; Source: string; EnvVariables?: string }[]; Fleet: { InAgreement: boolean | null } };
  const sourceOf = async (p: TestProxy, name: string) => (await status(p)).Services.find((s) => s.ServiceName === name)?.Source;

  before(async () => {
    consul = await startConsul();
    for (const name of ['books', 'shop', 'cart']) {
      const b = await startBackend(`${name}.0`);
      backends.push(b);
      await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: b.port });
    }
    // One proxy of the fleet defined by its environment, one without: they share the API's services.
    envProxy = await startProxy(consul.address, ENV);
    apiProxy = await startProxy(consul.address);
  });

  after(async () => {
    await envProxy?.stop();
    await apiProxy?.stop();
    for (const b of backends) await b.close();
    if (consul) await stopConsul(consul);
  });

  it('are routed by the time the proxy says it is ready, and say where they come from', async () => {
    assert.equal((await through(envProxy, '/books')).instance, 'books.0');
    assert.equal((await through(envProxy, '/shop')).instance, 'shop.0');
    const s = await status(envProxy);
    assert.deepEqual(
      s.Services.map((x) => [x.ServiceName, x.Source, x.EnvVariables]),
      [
        ['books', 'env', 'DFP_SERVICE_1_*'],
        ['shop', 'env', 'DFP_SERVICE_2_*'],
      ],
    );
    const json = (await callApi(envProxy, 'config', { type: 'json' })).body as Record<string, { Source: string }>;
    assert.equal(json.books?.Source, 'env');
    // They are this proxy's own: not in Consul KV, not on the other replica, and the replicas agree.
    assert.equal((await through(apiProxy, '/books')).status, 503);
    assert.equal(s.Fleet.InAgreement, true);
  });

  it('a change through the API (shared through KV) never removes them', async () => {
    const res = await callApi(apiProxy, 'reconfigure', { serviceName: 'cart', servicePath: '/cart' });
    assert.equal(res.status, 200, res.text);
    for (const p of [envProxy, apiProxy]) {
      for (let i = 0; i < 50 && (await through(p, '/cart')).status !== 200; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal((await through(p, '/cart')).instance, 'cart.0');
    }
    assert.equal((await through(envProxy, '/books')).instance, 'books.0');
    assert.equal(await sourceOf(envProxy, 'cart'), 'api');
  });

  it('an API call for the same name wins and says so; removing it brings the environment one back', async () => {
    const res = await callApi(envProxy, 'reconfigure', { serviceName: 'books', servicePath: '/books,/library' });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.body.Message), /also defined by DFP_SERVICE_1_\* in this proxy's environment; this one wins/);
    assert.equal((await through(envProxy, '/library')).instance, 'books.0');
    assert.equal(await sourceOf(envProxy, 'books'), 'api');
    assert.equal((await callApi(envProxy, 'remove', { serviceName: 'books' })).status, 200);
    assert.equal(await sourceOf(envProxy, 'books'), 'env');
    assert.equal((await through(envProxy, '/library')).status, 503);
    assert.equal((await through(envProxy, '/books')).instance, 'books.0');
  });

  it('remove of a service only the environment defines is a 400 naming serviceName', async () => {
    const res = await callApi(envProxy, 'remove', { serviceName: 'shop' });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.body.Parameter, 'serviceName');
    assert.match(String(res.body.Message), /DFP_SERVICE_2_\* in this proxy's environment/);
    assert.equal((await through(envProxy, '/shop')).instance, 'shop.0');
  });

  it('an invalid one stops start-up with an error naming the variable, before anything starts', async () => {
    const stateDir = tempDir();
    const settings = loadSettings({ CONSUL_ADDRESS: consul.address, STATE_DIR: stateDir, PORT: '0', IP: '127.0.0.1', DFP_SERVICE_1_SERVICE_NAME: 'bad', DFP_SERVICE_1_SERVICE_PATH: '/x y' });
    await assert.rejects(FlowProxy.start(settings, createLogger('error')), (e: unknown) => e instanceof DfpError && e.parameter === 'DFP_SERVICE_1_SERVICE_PATH');
  });
});
