import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../../src/util/ports.js';
import { callApi, haproxyGeneration, liveConfig, registerLikeRegistrator, type RoutedStack, startBackend, startConsul, startProxy, startRoutedStack, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/**
 * Bad input gets a 4xx naming the parameter and changes nothing: the live config stays
 * byte-identical and HAProxy does not reload. Hostile values never reach haproxy.cfg.
 */
describe('validation: bad and hostile input changes nothing', () => {
  let stack: RoutedStack;
  let proxy: TestProxy;

  before(async () => {
    stack = await startRoutedStack('demo', '/demo');
    proxy = stack.proxy;
  });

  after(async () => {
    stack.proxy = proxy;
    await stack?.stop();
  });

  async function expectRejected(query: string, status: number, parameter: string | undefined, code?: string): Promise<Record<string, unknown>> {
    const config = await liveConfig(proxy);
    const gen = await haproxyGeneration(proxy);
    const res = await callApi(proxy, 'reconfigure', query);
    assert.equal(res.status, status, `${query} -> ${res.text}`);
    assert.equal(res.body.Status, 'NOK');
    assert.equal(res.body.Parameter, parameter, `${query} -> ${res.text}`);
    if (code) assert.equal(res.body.Code, code);
    assert.ok(typeof res.body.Message === 'string' && res.body.Message.length > 0);
    assert.equal(await liveConfig(proxy), config, `config changed by ${query}`);
    assert.equal(await haproxyGeneration(proxy), gen, `HAProxy reloaded for ${query}`);
    return res.body;
  }

  const HOSTILE = [
    '\n',
    '\r',
    ' ',
    '\t',
    '#',
    '"',
    "'",
    '\\',
    '\u0000',
    '\u007f',
    'x'.repeat(600),
    '/a\nbackend evil\n    server x 1.2.3.4:80',
    '/a }',
    '/é',
  ];

  /** Every parameter that can reach haproxy.cfg, with otherwise valid companions. */
  const TARGETS: { param: string; base: Record<string, string> }[] = [
    { param: 'serviceName', base: { servicePath: '/x' } },
    { param: 'servicePath', base: { serviceName: 'demo' } },
    { param: 'servicePath.1', base: { serviceName: 'demo' } },
    { param: 'pathType', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'port', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'port.1', base: { serviceName: 'demo', servicePath: '/x', 'servicePath.1': '/y' } },
    { param: 'aclName', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'serviceColor', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'skipCheck', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'reqMode', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'discoveryType', base: { serviceName: 'demo', servicePath: '/x', port: '80' } },
    // reqMode=tcp destinations (issue 10).
    { param: 'timeoutClient', base: { serviceName: 'demo', reqMode: 'tcp', srcPort: '29999' } },
    { param: 'checkTcp', base: { serviceName: 'demo', reqMode: 'tcp', srcPort: '29999' } },
    { param: 'clitcpka', base: { serviceName: 'demo', reqMode: 'tcp', srcPort: '29999' } },
    { param: 'srcPort', base: { serviceName: 'demo', reqMode: 'tcp' } },
    { param: 'replicas', base: { serviceName: 'demo', servicePath: '/x' } },
    { param: 'distribute', base: { serviceName: 'demo', servicePath: '/x' } },
  ];

  it('hostile values in every parameter: 400 naming it, config and HAProxy unchanged', async () => {
    let checked = 0;
    for (const { param, base } of TARGETS) {
      for (const value of HOSTILE) {
        const q = new URLSearchParams({ ...base, [param]: value }).toString();
        const body = await expectRejected(q, 400, param);
        assert.equal(body.Code, 'DFP_ERR_INVALID_PARAM');
        checked++;
      }
    }
    assert.equal(checked, TARGETS.length * HOSTILE.length);
    // The hostile text never reached the file HAProxy reads.
    assert.doesNotMatch(await liveConfig(proxy), /evil/);
    assert.equal((await through(proxy, '/demo')).instance, 'demo.0');
  });

  /**
   * The HTTP routing set: every parameter that reaches haproxy.cfg, a map file or credentials.cfg.
   * Each hostile value is either refused (400 naming the parameter, nothing changes) or rendered
   * harmlessly: then the config still passes HAProxy, no line the operator did not ask for appears,
   * and the other routes keep working.
   */
  const HTTP_TARGETS = [
    'serviceDomain',
    'serviceDomain.1',
    'redirectFromDomain',
    'servicePathExclude',
    'serviceHeader',
    'userAgent',
    'allowedMethods',
    'deniedMethods',
    'addReqHeader',
    'setReqHeader',
    'delReqHeader',
    'addResHeader',
    'setResHeader',
    'delResHeader',
    'reqPathSearchReplace',
    'reqPathSearch',
    'users',
    'usersSecret',
    'serviceDomainAlgo',
    'connectionMode',
    'compressionAlgo',
    'compressionType',
    'sessionType',
    'httpsRedirectCode',
    'timeoutServer',
    'timeoutTunnel',
    'srcPort',
    'httpsOnly',
    'outboundHostname',
  ];
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a hostile value (HAProxy's env expansion), not a template
  const HTTP_HOSTILE = [...HOSTILE, 'X-A %[env(HOME)]', 'X-A ${HOME}', 'a:b\nuser evil insecure-password x', '^/(a),/\\9"', 'x,y:z', 'GET\r\nX'];

  it('hostile values in every HTTP routing parameter: refused by name, or rendered harmlessly', async () => {
    let refused = 0;
    let rendered = 0;
    for (const param of HTTP_TARGETS) {
      for (const value of HTTP_HOSTILE) {
        const base: Record<string, string> = { serviceName: 'hostile', servicePath: '/hostile', 'servicePath.1': '/hostile1' };
        if (!param.endsWith('.1')) delete base['servicePath.1'];
        const q = new URLSearchParams({ ...base, [param]: value }).toString();
        const config = await liveConfig(proxy);
        const res = await callApi(proxy, 'reconfigure', q);
        if (res.status === 200) {
          rendered++;
          const live = await liveConfig(proxy);
          assert.doesNotMatch(live, /^\s*(backend|server|user|frontend|userlist) evil/m, `${param}=${JSON.stringify(value)} injected a line`);
          // In a header rule a value is a log-format string: env() there would read the proxy's environment.
          assert.doesNotMatch(live, /-header .*env\(HOME\)/, `${param}: env() reached a header rule`);
          assert.equal((await through(proxy, '/demo')).instance, 'demo.0');
          assert.equal((await callApi(proxy, 'remove', { serviceName: 'hostile' })).status, 200);
        } else {
          refused++;
          assert.ok(res.status >= 400 && res.status < 500, `${param}=${JSON.stringify(value)} -> ${res.status} ${res.text}`);
          assert.equal(res.body.Parameter, param, `${param}=${JSON.stringify(value)} -> ${res.text}`);
          assert.equal(await liveConfig(proxy), config, `config changed by ${param}=${JSON.stringify(value)}`);
        }
      }
    }
    assert.ok(refused > rendered, `${refused} refused, ${rendered} rendered`);
    assert.equal((await through(proxy, '/demo')).instance, 'demo.0');
  });

  it('regex path types: HAProxy-level characters are refused before HAProxy sees them', async () => {
    for (const value of ['^/a b', '^/a#', '^/a\\d', "^/a'", '-f', '-m']) {
      await expectRejected(new URLSearchParams({ serviceName: 'demo', servicePath: value, pathType: 'path_reg' }).toString(), 400, 'servicePath');
    }
    // A leading '-' would be an ACL flag (`-f /etc/shadow` reads a file at `haproxy -c`).
    await expectRejected('serviceName=demo&pathType=path_end&servicePath=-f,/etc/shadow', 400, 'servicePath');
  });

  it('the original contract cases (AC-02)', async () => {
    await expectRejected('servicePath=/x', 400, 'serviceName', 'DFP_ERR_MISSING_PARAM');
    await expectRejected('serviceName=demo', 409, 'servicePath', 'DFP_ERR_NO_ROUTE');
    await expectRejected('serviceName=demo&servicePath=/x&port=abc', 400, 'port');
    await expectRejected('serviceName=demo&servicePath=/x&port=70000', 400, 'port');
    await expectRejected('serviceName=demo&servicePath=/x&port=0', 400, 'port');
    await expectRejected('serviceName=demo&servicePath=/x&skipCheck=maybe', 400, 'skipCheck');
    await expectRejected('serviceName=demo&servicePath.1=/a&servicePath.3=/c', 400, 'servicePath.3');
    await expectRejected('serviceName=demo&servicePath.0=/a', 400, 'servicePath.0');
    await expectRejected('serviceName=demo&servicePath.11=/a', 400, 'servicePath.11');
    await expectRejected('serviceName=demo&servicePath=/x&pathType=bogus', 400, 'pathType');
    await expectRejected('serviceName=demo&servicePath=/x&reqMode=udp', 400, 'reqMode');
    await expectRejected('serviceName=demo&servicePath=/x&templateFePath=/tmp/x', 400, 'templateFePath', 'DFP_ERR_UNSUPPORTED_PARAM');
    await expectRejected('serviceName=demo&servicePath=/x&backendExtra=x', 400, 'backendExtra', 'DFP_ERR_UNSUPPORTED_PARAM');
    await expectRejected('serviceName=demo&servicePath=/x&servicePath=/y', 400, 'servicePath');
    await expectRejected('serviceName=demo&servicePath=/a,,/b', 400, 'servicePath');
    await expectRejected('serviceName=demo&servicePath=x', 400, 'servicePath');
    await expectRejected('serviceName=demo&servicePath=/x&httpsOnly=yes', 400, 'httpsOnly');
    await expectRejected('serviceName=demo&servicePath=/x&httpsRedirectCode=200', 400, 'httpsRedirectCode');
    await expectRejected('serviceName=demo&servicePath=/x&connectionMode=forceclose', 400, 'connectionMode');
    // F16: a user without a password, and no USERS or usersSecret to give one.
    await expectRejected('serviceName=demo&servicePath=/x&users=ghost', 400, 'users');
    // Known parameters of the original this version does not implement are refused by name, not ignored.
    await expectRejected('serviceName=demo&servicePath=/x&outboundHostname=a.com', 400, 'port', 'DFP_ERR_INVALID_PARAM');
    await expectRejected('serviceName=demo&servicePath=/x&serviceGroup=g', 400, 'serviceGroup', 'DFP_ERR_UNSUPPORTED_PARAM');
  });

  it('another service may not take an aclName that is in use', async () => {
    await expectRejected('serviceName=other&servicePath=/other&aclName=demo', 400, 'aclName');
  });

  it('a regex HAProxy refuses: 400 with HAProxy\'s reason, fast, nothing changes', async () => {
    const started = performance.now();
    const body = await expectRejected(new URLSearchParams({ serviceName: 'rx', servicePath: '^/v[0-9', pathType: 'path_reg' }).toString(), 400, undefined, 'DFP_ERR_CONFIG_REJECTED');
    assert.ok(performance.now() - started < 2000, 'no retry loop');
    assert.match(String(body.Message), /regex/);
  });

  it('unknown parameters are ignored, as the Swarm Listener needs', async () => {
    const res = await callApi(proxy, 'reconfigure', 'serviceName=demo&servicePath=/demo&notify=true&scrapePort=9100&nodeInfo=%7B%7D&distribute=true&replicas=2&port=8080&weird.3=x');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.Distribute, true);
    assert.equal((await through(proxy, '/demo')).instance, 'demo.0');
  });

  it('a urlencoded POST body is read like the query string', async () => {
    const res = await fetch(`${proxy.api}/reconfigure`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: 'serviceName=demo&servicePath=/demo,/demo2',
    });
    assert.equal(res.status, 200);
    assert.equal((await through(proxy, '/demo2/x')).instance, 'demo.0');
    const dup = await fetch(`${proxy.api}/reconfigure?serviceName=demo`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: 'serviceName=demo&servicePath=/demo',
    });
    assert.equal(dup.status, 400);
  });

  it('unknown endpoints answer 404 JSON; config is text/plain', async () => {
    const res = await fetch(`${proxy.api}/nope`);
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { Status: string }).Status, 'NOK');
    const cfg = await fetch(`${proxy.api}/config`);
    assert.match(cfg.headers.get('content-type') ?? '', /^text\/plain/);
    assert.match(await cfg.text(), /frontend services/);
    assert.deepEqual(await (await fetch(`${proxy.api}/ping`)).json(), { Status: 'OK', Message: '' });
  });
});

describe('Consul failures', () => {
  it('Consul unreachable: 503 naming Consul, nothing changes', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    // Never ready (it cannot restore the shared state), but it must answer clearly.
    const proxy = await startProxy(dead, { NO_WAIT_READY: '1' });
    try {
      const config = await liveConfig(proxy);
      const res = await callApi(proxy, 'reconfigure', { serviceName: 'demo', servicePath: '/demo' });
      assert.equal(res.status, 503);
      assert.equal(res.body.Code, 'DFP_ERR_CONSUL_UNAVAILABLE');
      assert.match(String(res.body.Message), /Consul is unavailable.*ECONNREFUSED/);
      assert.equal(await liveConfig(proxy), config);
      assert.equal((await callApi(proxy, 'successfulinitreload')).status, 503);
      assert.equal((await callApi(proxy, 'ping')).status, 200);
    } finally {
      await proxy.stop();
    }
  });

  it('CONSUL_ADDRESS is a list tried in order, with or without http://', async () => {
    const consul = await startConsul();
    const backend = await startBackend('multi.0');
    const dead = `http://127.0.0.1:${await freePort()}`;
    const proxy = await startProxy(`${dead}, ${consul.address.replace('http://', '')}`);
    try {
      await registerLikeRegistrator(consul.address, { name: 'multi', container: 'multi.0', exposedPort: 80, hostPort: backend.port });
      assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'multi', servicePath: '/multi' })).status, 200);
      assert.equal((await through(proxy, '/multi')).instance, 'multi.0');
    } finally {
      await proxy.stop();
      await backend.close();
      await stopConsul(consul);
    }
  });
});
