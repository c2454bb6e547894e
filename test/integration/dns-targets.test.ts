import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { startDns } from '../helpers/dns.js';
import { type Backend, callApi, eventually, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/** Issue 10: DNS targets (`outboundHostname`), resolved by HAProxy with a resolver the test runs. */
describe('DNS targets (outboundHostname)', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let dns: Awaited<ReturnType<typeof startDns>>;
  let dnsBackend: Backend;
  let consulBackend: Backend;

  before(async () => {
    consul = await startConsul();
    dnsBackend = await startBackend('by-dns.0');
    consulBackend = await startBackend('books.0');
    await registerLikeRegistrator(consul.address, { name: 'books', container: 'books.0', exposedPort: 80, hostPort: consulBackend.port });
    dns = await startDns(new Map([['books-api.test', '127.0.0.1'], ['stack_web', '127.0.0.1']]));
    proxy = await startProxy(consul.address, { RESOLVERS: `nameserver t 127.0.0.1:${dns.port}` });
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'books', servicePath: '/books' })).status, 200);
  });

  after(async () => {
    await proxy?.stop();
    await dnsBackend?.close();
    await consulBackend?.close();
    await dns?.close();
    if (consul) await stopConsul(consul);
  });

  it('routes to a DNS name on port, resolved by HAProxy through RESOLVERS', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'api', servicePath: '/api', outboundHostname: 'books-api.test', port: String(dnsBackend.port) });
    assert.equal(res.status, 200, res.text);
    assert.doesNotMatch(String(res.body.Message), /no healthy instance/, 'no Consul warning for a DNS target');
    await eventually('the name resolved and served', async () => (await through(proxy, '/api')).instance, (i) => i === 'by-dns.0', 15_000);
    assert.ok(dns.queries.includes('books-api.test'), 'HAProxy asked our resolver');
    const config = (await callApi(proxy, 'config')).text;
    assert.match(config, new RegExp(`server-template s 1-4 books-api\\.test:${dnsBackend.port} resolvers dfp resolve-prefer ipv4 init-addr none check`));
    assert.match(config, new RegExp(`resolvers dfp\\n    nameserver t 127\\.0\\.0\\.1:${dns.port}`));
  });

  it('a name that does not resolve answers 503 and breaks no other route', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'ghost', servicePath: '/ghost', outboundHostname: 'nowhere.test', port: '80' });
    assert.equal(res.status, 200, res.text);
    assert.equal((await through(proxy, '/ghost')).status, 503);
    assert.equal((await through(proxy, '/books')).instance, 'books.0');
    assert.equal((await through(proxy, '/api')).instance, 'by-dns.0');
  });

  it('outboundHostname needs port; a wildcard or a port in the name is refused, naming the parameter', async () => {
    for (const [params, parameter] of [
      [{ outboundHostname: 'a.test' }, 'port'],
      [{ outboundHostname: '*.a.test', port: '80' }, 'outboundHostname'],
      [{ outboundHostname: 'a.test:80', port: '80' }, 'outboundHostname'],
      [{ outboundHostname: 'a.test\nserver x 1.2.3.4:80', port: '80' }, 'outboundHostname'],
    ] as const) {
      const res = await callApi(proxy, 'reconfigure', { serviceName: 'bad', servicePath: '/bad', ...params });
      assert.equal(res.status, 400, `${JSON.stringify(params)}: ${res.text}`);
      assert.equal(res.body.Parameter, parameter);
    }
  });

  it('discoveryType=DNS (the original\'s value) routes to the service\'s own name, `_` included, on port', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'stack_web', servicePath: '/web', discoveryType: 'DNS', port: String(dnsBackend.port) });
    assert.equal(res.status, 200, res.text);
    await eventually('stack_web resolved and served', async () => (await through(proxy, '/web')).instance, (i) => i === 'by-dns.0', 15_000);
    assert.ok(dns.queries.includes('stack_web'), 'HAProxy asked for the service name');
    const json = (await callApi(proxy, 'config', { type: 'json' })).body as Record<string, Record<string, unknown>>;
    assert.equal(json.stack_web?.DiscoveryType, 'dns');
    for (const [params, parameter] of [
      [{ serviceName: 'noport', discoveryType: 'dns' }, 'port'],
      [{ serviceName: 'a.-b', discoveryType: 'dns', port: '80' }, 'serviceName'],
      [{ serviceName: 'x', discoveryType: 'etcd', port: '80' }, 'discoveryType'],
    ] as const) {
      const bad = await callApi(proxy, 'reconfigure', { servicePath: '/bad', ...params });
      assert.equal(bad.status, 400, `${JSON.stringify(params)}: ${bad.text}`);
      assert.equal(bad.body.Parameter, parameter);
    }
  });

  it('outboundHostname accepts Swarm names with `_`', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'swarmish', servicePath: '/swarmish', outboundHostname: 'stack_web', port: String(dnsBackend.port) });
    assert.equal(res.status, 200, res.text);
    await eventually('served', async () => (await through(proxy, '/swarmish')).instance, (i) => i === 'by-dns.0', 15_000);
  });
});

/** DISCOVERY=dns: services Consul does not know go to their DNS name; the ones it knows stay Consul's. */
describe('DISCOVERY=dns', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let dns: Awaited<ReturnType<typeof startDns>>;
  let dnsBackend: Backend;
  let consulBackend: Backend;

  before(async () => {
    consul = await startConsul();
    dnsBackend = await startBackend('swarm-task.0');
    consulBackend = await startBackend('books.0');
    await registerLikeRegistrator(consul.address, { name: 'books', container: 'books.0', exposedPort: 80, hostPort: consulBackend.port });
    // The DNS server also knows `books`: a service Consul knows must not go there.
    dns = await startDns(new Map([['go-demo', '127.0.0.1'], ['books', '127.0.0.2'], ['later', '127.0.0.1']]));
    proxy = await startProxy(consul.address, { RESOLVERS: `nameserver t 127.0.0.1:${dns.port}`, DISCOVERY: 'dns' });
  });

  after(async () => {
    await proxy?.stop();
    await dnsBackend?.close();
    await consulBackend?.close();
    await dns?.close();
    if (consul) await stopConsul(consul);
  });

  it('a service Consul does not know is routed to serviceName:port, and says so', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'go-demo', servicePath: '/demo', port: String(dnsBackend.port) });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.body.Message), /Consul does not know go-demo: routed to the DNS name go-demo \(DISCOVERY=dns\)/);
    await eventually('go-demo served by DNS', async () => (await through(proxy, '/demo')).instance, (i) => i === 'swarm-task.0', 15_000);
    const json = (await callApi(proxy, 'config', { type: 'json' })).body as Record<string, Record<string, unknown>>;
    assert.equal(json['go-demo']?.DiscoveryType, 'dns', 'the choice is stored with the spec, so replicas make the same one');
  });

  it('a service Consul knows stays Consul-discovered', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'books', servicePath: '/books', port: '80' });
    assert.equal(res.status, 200, res.text);
    assert.doesNotMatch(String(res.body.Message), /DNS/);
    assert.equal((await through(proxy, '/books')).instance, 'books.0');
    const config = (await callApi(proxy, 'config')).text;
    assert.doesNotMatch(config, /server-template s [^\n]* books:80/);
  });

  it('discoveryType=consul keeps an unknown service on Consul (503 until registered)', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'later', servicePath: '/later', port: '80', discoveryType: 'consul' });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.body.Message), /no healthy instance of later/);
    assert.equal((await through(proxy, '/later')).status, 503);
  });

  it('sticky sessions cannot go to a DNS name: such a service stays on Consul, and is stored as every replica accepts it', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'sticky', servicePath: '/sticky', port: '80', sessionType: 'sticky-server' });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.body.Message), /no healthy instance of sticky/);
    const json = (await callApi(proxy, 'config', { type: 'json' })).body as Record<string, Record<string, unknown>>;
    assert.equal(json.sticky?.DiscoveryType, '');
  });

  it('without a port there is no DNS target: Consul it stays, with its warning', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'noport', servicePath: '/noport' });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.body.Message), /no healthy instance of noport/);
  });
});

