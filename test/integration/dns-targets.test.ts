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
    dns = await startDns(new Map([['books-api.test', '127.0.0.1']]));
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
});
