import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { type IncomingHttpHeaders, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import {
  type ApiAnswer,
  type Backend,
  callApi,
  type Echo,
  haproxyGeneration,
  liveConfig,
  registerLikeRegistrator,
  startConsul,
  startBackend,
  startProxy,
  stopConsul,
  type TestProxy,
} from '../helpers/harness.js';

/**
 * HTTP routing parameters end to end: a real Consul, real HAProxy processes and echo backends that
 * answer with the request they saw ({instance, method, path, headers}). One Consul serves every
 * proxy; each proxy has its own PROXY_INSTANCE_NAME, so none sees another's services.
 */

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly text: string;
  /** The backend's echo, when one answered. */
  readonly echo: Echo | undefined;
}

interface SendOptions {
  readonly host?: string;
  readonly method?: string;
  readonly headers?: Record<string, string>;
}

/** One request through HAProxy on a fresh connection to 127.0.0.1, with any Host and method. */
function send(p: TestProxy, urlPath: string, opts: SendOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: p.httpPort,
        path: urlPath,
        method: opts.method ?? 'GET',
        agent: false,
        headers: { Host: opts.host ?? `127.0.0.1:${p.httpPort}`, Connection: 'close', ...opts.headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () => {
          let echo: Echo | undefined;
          if (res.statusCode === 200 && text.startsWith('{"instance"')) echo = JSON.parse(text) as Echo;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, echo });
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Which instance answered, or the status when none did. */
async function who(p: TestProxy, urlPath: string, opts: SendOptions = {}): Promise<string | number> {
  const a = await send(p, urlPath, opts);
  return a.echo?.instance ?? a.status;
}

function basic(user: string, password: string): Record<string, string> {
  return { Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` };
}

async function lastApply(p: TestProxy): Promise<{ kind: string; trigger: string }> {
  const applies = (await callApi(p, 'status')).body.Applies as { kind: string; trigger: string }[];
  const last = applies.at(-1);
  assert.ok(last, 'no apply recorded');
  return last;
}

// The four groups below each own a proxy and run side by side; the tests of a group run in order.
describe('HTTP routing on a real HAProxy', { concurrency: true }, () => {
  let consul: ConsulAgent;
  const backends = new Map<string, Backend>();
  const proxies: TestProxy[] = [];

  before(async () => {
    consul = await startConsul();
  });

  after(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all([...backends.values()].map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function proxy(instanceName: string, env: Record<string, string> = {}): Promise<TestProxy> {
    const p = await startProxy(consul.address, { PROXY_INSTANCE_NAME: instanceName, ...env });
    proxies.push(p);
    return p;
  }

  /** An echo instance `<consulName>.0` (once per Consul service name). */
  async function instance(consulName: string): Promise<void> {
    if (backends.has(consulName)) return;
    const b = await startBackend(`${consulName}.0`);
    backends.set(consulName, b);
    await registerLikeRegistrator(consul.address, { name: consulName, container: `${consulName}.0`, exposedPort: 8080, hostPort: b.port });
  }

  /** Starts and registers the service's instance, then reconfigures; the answer must be 200. */
  async function service(p: TestProxy, params: Record<string, string>): Promise<ApiAnswer> {
    const name = params.serviceName ?? '';
    await instance(name);
    const res = await callApi(p, 'reconfigure', params);
    assert.equal(res.status, 200, `reconfigure ${JSON.stringify(params)} -> ${res.text}`);
    return res;
  }

  describe('domains, paths and precedence (AC-05, AC-06, AC-07)', { concurrency: 1 }, () => {
    let main: TestProxy;

    before(async () => {
      main = await proxy('routing');
    });

    it('serviceDomain=a.com,b.com with servicePath=/app: Host case and port do not matter; other hosts get 503', async () => {
      await service(main, { serviceName: 'dom', serviceDomain: 'a.com,b.com', servicePath: '/app' });
      assert.equal(await who(main, '/app', { host: 'a.com' }), 'dom.0');
      assert.equal(await who(main, '/app/x', { host: 'B.COM' }), 'dom.0');
      assert.equal(await who(main, '/app', { host: 'a.com:80' }), 'dom.0');
      assert.equal(await who(main, '/app', { host: 'c.com' }), 503);
      assert.equal(await who(main, '/app'), 503, 'no Host route without the domain');
      assert.equal(await who(main, '/other', { host: 'a.com' }), 503, 'only /app on a.com');
    });

    it('serviceDomain=*.a.com without a path routes every path of every sub-domain, and nothing else', async () => {
      await service(main, { serviceName: 'wild', serviceDomain: '*.a.com' });
      assert.equal(await who(main, '/anything', { host: 'x.a.com' }), 'wild.0');
      assert.equal(await who(main, '/', { host: 'y.x.a.com' }), 'wild.0');
      assert.equal(await who(main, '/anything', { host: 'a.org' }), 503);
      assert.equal(await who(main, '/app', { host: 'a.com' }), 'dom.0', 'a.com itself is not *.a.com');
    });

    it('default hdr_beg(host) matches a Host that only starts with the domain (the pitfall); hdr(host) is exact', async () => {
      // Documents the original's default: a.com.evil.net starts with a.com, so it routes.
      assert.equal(await who(main, '/app', { host: 'a.com.evil.net' }), 'dom.0');
      await service(main, { serviceName: 'exact', serviceDomain: 'e.com', servicePath: '/e', serviceDomainAlgo: 'hdr(host)' });
      assert.equal(await who(main, '/e', { host: 'e.com' }), 'exact.0');
      assert.equal(await who(main, '/e', { host: 'E.com:80' }), 'exact.0');
      assert.equal(await who(main, '/e', { host: 'e.com.evil.net' }), 503);
    });

    it('redirectFromDomain=old.a.com answers 301 to http://a.com with the same path and query', async () => {
      await service(main, { serviceName: 'redir', serviceDomain: 'a.com', redirectFromDomain: 'old.a.com' });
      const res = await send(main, '/some/path?q=1', { host: 'old.a.com' });
      assert.equal(res.status, 301);
      assert.equal(res.headers.location, 'http://a.com/some/path?q=1');
      assert.equal(await who(main, '/some/path', { host: 'a.com' }), 'redir.0');
      assert.equal(await who(main, '/app', { host: 'a.com' }), 'dom.0', 'the longer path of a.com still wins');
    });

    it('redirectFromDomain works on a pattern route too (the redirect is keyed by host alone)', async () => {
      await service(main, { serviceName: 'rxredir', serviceDomain: 'rx.com', redirectFromDomain: 'old.rx.com', servicePath: '^/v[0-9]+/', pathType: 'path_reg' });
      const res = await send(main, '/v2/x', { host: 'old.rx.com' });
      assert.equal(res.status, 301);
      assert.equal(res.headers.location, 'http://rx.com/v2/x');
      assert.equal(await who(main, '/v2/x', { host: 'rx.com' }), 'rxredir.0');
    });

    it('two services sharing servicePath=/ on different domains each get their own Host', async () => {
      await service(main, { serviceName: 'site1', serviceDomain: 'one.com', servicePath: '/' });
      await service(main, { serviceName: 'site2', serviceDomain: 'two.com', servicePath: '/' });
      assert.equal(await who(main, '/x', { host: 'one.com' }), 'site1.0');
      assert.equal(await who(main, '/x', { host: 'two.com' }), 'site2.0');
      assert.equal(await who(main, '/x', { host: 'three.com' }), 503);
    });

    it('host-specific routes win over host-less ones (AC-05)', async () => {
      await service(main, { serviceName: 'hostless', servicePath: '/shared' });
      await service(main, { serviceName: 'hosted', serviceDomain: 'h.com', servicePath: '/shared' });
      assert.equal(await who(main, '/shared/1', { host: 'h.com' }), 'hosted.0');
      assert.equal(await who(main, '/shared/1', { host: 'other.com' }), 'hostless.0');
      assert.equal(await who(main, '/shared/1'), 'hostless.0');
    });

    it('a route two services claim goes to the first by aclName, and both reconfigures say so', async () => {
      await service(main, { serviceName: 'claim-a', servicePath: '/claimed' });
      const loser = await service(main, { serviceName: 'claim-b', servicePath: '/claimed' });
      assert.match(String(loser.body.Message), /route \S*\/claimed\S* is claimed by both claim-a and claim-b; claim-a wins/);
      assert.equal(await who(main, '/claimed'), 'claim-a.0');
      // Repeated right after another service went live through the runtime API (files still lagging).
      await service(main, { serviceName: 'claim-c', servicePath: '/claim-c' });
      const again = await callApi(main, 'reconfigure', { serviceName: 'claim-b', servicePath: '/claimed' });
      assert.match(String(again.body.Message), /claimed by both claim-a and claim-b/);
      const quiet = await callApi(main, 'reconfigure', { serviceName: 'claim-c', servicePath: '/claim-c' });
      assert.doesNotMatch(String(quiet.body.Message), /claimed/);
    });

    it('a host-less /.well-known/acme-challenge wins over a domain catch-all / (AC-05)', async () => {
      await service(main, { serviceName: 'acme', servicePath: '/.well-known/acme-challenge' });
      await service(main, { serviceName: 'shop', serviceDomain: 'shop.com' });
      assert.equal(await who(main, '/.well-known/acme-challenge/token', { host: 'shop.com' }), 'acme.0');
      assert.equal(await who(main, '/index.html', { host: 'shop.com' }), 'shop.0');
      assert.equal(await who(main, '/.well-known/other', { host: 'shop.com' }), 'shop.0', 'only the challenge path');
    });

    it('pathType=path_reg routes by regular expression (AC-06)', async () => {
      await service(main, { serviceName: 'items', pathType: 'path_reg', servicePath: '^/v[0-9]+/items' });
      assert.equal(await who(main, '/v1/items'), 'items.0');
      assert.equal(await who(main, '/v22/items/7'), 'items.0');
      assert.equal(await who(main, '/vx/items'), 503);
      assert.equal(await who(main, '/x/v1/items'), 503);
    });

    it('pathType=path_end routes by suffix (AC-06)', async () => {
      await service(main, { serviceName: 'jsonfiles', pathType: 'path_end', servicePath: '.json' });
      assert.equal(await who(main, '/a/b.json'), 'jsonfiles.0');
      assert.equal(await who(main, '/a/b.jsonx'), 503);
    });

    it('servicePathExclude takes a sub-path away from a service (AC-06)', async () => {
      await service(main, { serviceName: 'demo', servicePath: '/demo', servicePathExclude: '/demo/internal' });
      assert.equal(await who(main, '/demo/x'), 'demo.0');
      assert.equal(await who(main, '/demo'), 'demo.0');
      assert.equal(await who(main, '/demo/internal'), 503);
      assert.equal(await who(main, '/demo/internal/y'), 503);
    });

    it('a pattern pathType combined with serviceDomain needs both (AC-06)', async () => {
      await service(main, { serviceName: 'preg', pathType: 'path_reg', servicePath: '^/r/[0-9]+$', serviceDomain: 'pr.com' });
      assert.equal(await who(main, '/r/12', { host: 'pr.com' }), 'preg.0');
      assert.equal(await who(main, '/r/12', { host: 'PR.com:80' }), 'preg.0');
      assert.equal(await who(main, '/r/12'), 503);
      assert.equal(await who(main, '/r/x', { host: 'pr.com' }), 503);
      await service(main, { serviceName: 'pend', pathType: 'path_end', servicePath: '.xml', serviceDomain: 'px.com' });
      assert.equal(await who(main, '/feed.xml', { host: 'px.com' }), 'pend.0');
      assert.equal(await who(main, '/feed.xml', { host: 'py.com' }), 503);
    });
  });

  describe('SERVICE_DOMAIN_ALGO=hdr(host) and backend naming', { concurrency: 1 }, () => {
    let exact: TestProxy;

    before(async () => {
      exact = await proxy('exact', { SERVICE_DOMAIN_ALGO: 'hdr(host)' });
    });

    it('the proxy-wide exact algorithm refuses a Host that only starts with the domain', async () => {
      await service(exact, { serviceName: 'xdom', serviceDomain: 'a.com', servicePath: '/app' });
      assert.equal(await who(exact, '/app', { host: 'a.com' }), 'xdom.0');
      assert.equal(await who(exact, '/app', { host: 'A.com:80' }), 'xdom.0');
      assert.equal(await who(exact, '/app', { host: 'a.com.evil.net' }), 503);
    });

    it('... also for pattern routes with a domain', async () => {
      await service(exact, { serviceName: 'xreg', pathType: 'path_reg', servicePath: '^/reg/', serviceDomain: 'r.com' });
      assert.equal(await who(exact, '/reg/1', { host: 'r.com' }), 'xreg.0');
      assert.equal(await who(exact, '/reg/1', { host: 'r.com.evil.net' }), 503);
    });

    it('regression: web (port 8080) and web80 (port 80) with path_end routes do not share ACL names', async () => {
      await service(exact, { serviceName: 'web', port: '8080', pathType: 'path_end', servicePath: '.json' });
      await service(exact, { serviceName: 'web80', port: '80', pathType: 'path_end', servicePath: '.xml' });
      assert.equal(await who(exact, '/a.xml'), 'web80.0');
      assert.equal(await who(exact, '/a.json'), 'web.0');
      assert.equal(await who(exact, '/a.txt'), 503);
    });
  });

  describe('basic auth (AC-16)', { concurrency: 1 }, () => {
    let auth: TestProxy;

    before(async () => {
      auth = await proxy('auth', { USERS: 'admin:pw' });
    });

    it('users=ops:s3cret protects the service with its own users only; the backend never sees Authorization', async () => {
      const res = await service(auth, { serviceName: 's', servicePath: '/s', users: 'ops:s3cret' });
      assert.doesNotMatch(res.text, /s3cret/);
      const none = await send(auth, '/s');
      assert.equal(none.status, 401);
      assert.match(String(none.headers['www-authenticate']), /^Basic realm="s"/);
      const ok = await send(auth, '/s', { headers: basic('ops', 's3cret') });
      assert.equal(ok.status, 200);
      assert.equal(ok.echo?.instance, 's.0');
      assert.equal(ok.echo?.headers.authorization, undefined);
      assert.equal((await send(auth, '/s', { headers: basic('admin', 'pw') })).status, 401, 'USERS do not open a service with its own users');
      assert.equal((await send(auth, '/s', { headers: basic('ops', 'wrong') })).status, 401);
    });

    it('a service without users is protected by USERS', async () => {
      await service(auth, { serviceName: 'open', servicePath: '/open' });
      assert.equal((await send(auth, '/open')).status, 401);
      const ok = await send(auth, '/open', { headers: basic('admin', 'pw') });
      assert.equal(ok.status, 200);
      assert.equal(ok.echo?.headers.authorization, undefined);
      assert.equal((await send(auth, '/open', { headers: basic('ops', 's3cret') })).status, 401);
    });

    it('ignoreAuthorization.1=true opens destination 1 only', async () => {
      await service(auth, { serviceName: 'idx', 'servicePath.1': '/idx1', 'ignoreAuthorization.1': 'true', 'servicePath.2': '/idx2' });
      assert.equal(await who(auth, '/idx1'), 'idx.0');
      assert.equal((await send(auth, '/idx2')).status, 401);
      assert.equal(await who(auth, '/idx2', { headers: basic('admin', 'pw') }), 'idx.0');
    });

    it('usersPassEncrypted=true takes crypt(3) hashes', async () => {
      const hash = execFileSync('openssl', ['passwd', '-6', 'pw'], { encoding: 'utf8' }).trim();
      assert.match(hash, /^\$6\$/);
      const res = await service(auth, { serviceName: 'enc', servicePath: '/enc', users: `enc:${hash}`, usersPassEncrypted: 'true' });
      assert.ok(!res.text.includes(hash), 'the hash is not echoed');
      assert.equal(await who(auth, '/enc', { headers: basic('enc', 'pw') }), 'enc.0');
      assert.equal((await send(auth, '/enc', { headers: basic('enc', 'wrong') })).status, 401);
      assert.equal((await send(auth, '/enc')).status, 401);
      assert.ok(!(await liveConfig(auth)).includes(hash));
    });

    it('users=ghost with no password anywhere is refused naming users', async () => {
      const config = await liveConfig(auth);
      const res = await callApi(auth, 'reconfigure', { serviceName: 'ghost', servicePath: '/ghost', users: 'ghost' });
      assert.equal(res.status, 400);
      assert.equal(res.body.Parameter, 'users');
      assert.match(String(res.body.Message), /ghost/);
      assert.equal(await liveConfig(auth), config);
      // A user named in USERS takes its password from there.
      await service(auth, { serviceName: 'named', servicePath: '/named', users: 'admin' });
      assert.equal(await who(auth, '/named', { headers: basic('admin', 'pw') }), 'named.0');
    });

    it('no endpoint shows a password', async () => {
      for (const [endpoint, params] of [
        ['config', {}],
        ['config', { type: 'json' }],
        ['status', {}],
      ] as const) {
        const res = await callApi(auth, endpoint, params);
        assert.equal(res.status, 200);
        assert.ok(!res.text.includes('s3cret'), `${endpoint} ${JSON.stringify(params)} shows the password`);
        assert.ok(!/insecure-password|userlist/.test(res.text), `${endpoint} shows userlists`);
      }
      const json = (await callApi(auth, 'config', { type: 'json' })).body as Record<string, { Users?: unknown }>;
      assert.deepEqual(json.s?.Users, [{ Username: 'ops' }]);
    });
  });

  describe('headers, methods, rewrites, https and the default backend (AC-17, AC-18)', { concurrency: 1 }, () => {
    let main: TestProxy;

    before(async () => {
      main = await proxy('behaviour');
    });

    it('serviceHeader=X-Version:2 routes only requests carrying that header', async () => {
      await service(main, { serviceName: 'v2', servicePath: '/hv', serviceHeader: 'X-Version:2' });
      assert.equal(await who(main, '/hv', { headers: { 'X-Version': '2' } }), 'v2.0');
      assert.equal(await who(main, '/hv', { headers: { 'X-Version': '3' } }), 503);
      assert.equal(await who(main, '/hv'), 503);
    });

    it('userAgent.1=iPhone sends iPhones to destination 1 and everything else to destination 2', async () => {
      // One Consul service, two backends (port.1 / port.2); destination 1 marks its requests by a rewrite.
      await service(main, {
        serviceName: 'ua',
        'servicePath.1': '/ua',
        'port.1': '8081',
        'userAgent.1': 'iPhone',
        'reqPathSearchReplace.1': '^/ua/(.*),/mobile/\\1',
        'servicePath.2': '/ua',
        'port.2': '8082',
      });
      const iphone = await send(main, '/ua/page', { headers: { 'User-Agent': 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)' } });
      assert.equal(iphone.echo?.path, '/mobile/page');
      const desktop = await send(main, '/ua/page', { headers: { 'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64)' } });
      assert.equal(desktop.echo?.path, '/ua/page');
      assert.equal((await send(main, '/ua/page')).echo?.path, '/ua/page');
    });

    it('request header rules reach the backend; response header rules reach the client', async () => {
      await service(main, {
        serviceName: 'hdrs',
        servicePath: '/hdrs',
        addReqHeader: 'X-Added one,X-Added two',
        setReqHeader: 'X-Set fixed',
        delReqHeader: 'X-Drop',
        addResHeader: 'X-Res-Added yes',
        setResHeader: 'X-Powered-By proxy',
        delResHeader: 'X-Internal',
      });
      const res = await send(main, '/hdrs', { headers: { 'X-Set': 'from-client', 'X-Drop': 'secret', 'X-Keep': 'kept' } });
      assert.equal(res.status, 200);
      const h = res.echo?.headers ?? {};
      assert.equal(h['x-added'], 'one, two');
      assert.equal(h['x-set'], 'fixed');
      assert.equal(h['x-drop'], undefined);
      assert.equal(h['x-keep'], 'kept');
      assert.equal(res.headers['x-res-added'], 'yes');
      assert.equal(res.headers['x-powered-by'], 'proxy');
      assert.equal(res.headers['x-internal'], undefined);
    });

    it('allowedMethods=GET,HEAD answers 403 to POST; deniedMethods=DELETE answers 403 to DELETE', async () => {
      await service(main, { serviceName: 'ro', servicePath: '/ro', allowedMethods: 'GET,HEAD' });
      assert.equal((await send(main, '/ro')).status, 200);
      assert.equal((await send(main, '/ro', { method: 'HEAD' })).status, 200);
      assert.equal((await send(main, '/ro', { method: 'POST' })).status, 403);
      await service(main, { serviceName: 'nodel', servicePath: '/nodel', deniedMethods: 'DELETE' });
      assert.equal((await send(main, '/nodel', { method: 'DELETE' })).status, 403);
      const put = await send(main, '/nodel', { method: 'PUT' });
      assert.equal(put.echo?.method, 'PUT');
    });

    it('reqPathSearchReplace rewrites the path the backend sees (AC-18)', async () => {
      await service(main, { serviceName: 'api', servicePath: '/api', reqPathSearchReplace: '^/api/(.*),/\\1' });
      assert.equal((await send(main, '/api/users/7?x=1')).echo?.path, '/users/7?x=1');
      // Legacy pair.
      await service(main, { serviceName: 'legacy', servicePath: '/legacy', reqPathSearch: '^/legacy/', reqPathReplace: '/new/' });
      assert.equal((await send(main, '/legacy/x')).echo?.path, '/new/x');
      // Empty replacement.
      await service(main, { serviceName: 'strip', servicePath: '/strip', reqPathSearchReplace: '^/strip,' });
      assert.equal((await send(main, '/strip/x')).echo?.path, '/x');
      // Two pairs joined by ':', applied in order.
      await service(main, { serviceName: 'two', servicePath: '/two', reqPathSearchReplace: '^/two/,/mid/:^/mid/(.*)$,/end/\\1' });
      assert.equal((await send(main, '/two/x')).echo?.path, '/end/x');
    });

    it('httpsOnly redirects plain HTTP (302, or httpsRedirectCode); denyHttp answers 403', async () => {
      await service(main, { serviceName: 'secure', servicePath: '/secure', httpsOnly: 'true' });
      const r302 = await send(main, '/secure/x?y=1', { host: 'secure.com' });
      assert.equal(r302.status, 302);
      assert.equal(r302.headers.location, 'https://secure.com/secure/x?y=1');
      await service(main, { serviceName: 'secure301', servicePath: '/secure301', httpsOnly: 'true', httpsRedirectCode: '301' });
      const r301 = await send(main, '/secure301', { host: 'secure.com' });
      assert.equal(r301.status, 301);
      assert.match(String(r301.headers.location), /^https:\/\/secure\.com\/secure301$/);
      await service(main, { serviceName: 'nohttp', servicePath: '/nohttp', denyHttp: 'true' });
      assert.equal((await send(main, '/nohttp')).status, 403);
    });

    it('redirectWhenHttpProto=true redirects when X-Forwarded-Proto is http', async () => {
      await service(main, { serviceName: 'behindlb', servicePath: '/lb', redirectWhenHttpProto: 'true' });
      const res = await send(main, '/lb/x', { host: 'lb.com', headers: { 'X-Forwarded-Proto': 'http' } });
      assert.equal(res.status, 302, 'HAProxy redirect default');
      assert.equal(res.headers.location, 'https://lb.com/lb/x');
      assert.equal(await who(main, '/lb/x', { headers: { 'X-Forwarded-Proto': 'https' } }), 'behindlb.0');
      assert.equal(await who(main, '/lb/x'), 'behindlb.0');
    });

    it('isDefaultBackend=true gets the requests no route matches', async () => {
      assert.equal(await who(main, '/nowhere'), 503);
      await service(main, { serviceName: 'fallback', servicePath: '/fallback', isDefaultBackend: 'true' });
      assert.equal(await who(main, '/nowhere'), 'fallback.0');
      assert.equal(await who(main, '/x', { host: 'unknown.com' }), 'fallback.0');
      assert.equal(await who(main, '/api/1'), 'api.0', 'routes still win');
      assert.equal((await callApi(main, 'remove', { serviceName: 'fallback' })).status, 200);
      assert.equal(await who(main, '/nowhere'), 503);
    });

    it('adding a domain route to a service whose backend exists needs no reload once its kind of route is in use', async () => {
      // The frontend looks up only the kinds of routes in use (host prefixes, wildcards, …): the
      // first of a kind may cost one reload, and is not what this test measures. A service of its
      // own keeps those kinds in use whatever reloads happen meanwhile.
      await service(main, { serviceName: 'rtkinds', servicePath: '/rtkinds', serviceDomain: 'first.com,*.first.org' });
      await service(main, { serviceName: 'rt', servicePath: '/rt' });
      const gen = await haproxyGeneration(main);
      await service(main, { serviceName: 'rt', servicePath: '/rt', serviceDomain: 'rt.com' });
      assert.equal((await lastApply(main)).kind, 'runtime');
      assert.equal(await who(main, '/rt', { host: 'rt.com' }), 'rt.0');
      assert.equal(await who(main, '/rt', { host: 'other.com' }), 503);
      await service(main, { serviceName: 'rt', servicePath: '/rt', serviceDomain: 'rt.com,*.rt.org' });
      assert.equal((await lastApply(main)).kind, 'runtime');
      assert.equal(await who(main, '/rt', { host: 'x.rt.org' }), 'rt.0');
      // A new domain-routed service takes a spare backend: no reload either.
      await service(main, { serviceName: 'rtnew', serviceDomain: 'rtnew.com' });
      assert.equal((await lastApply(main)).kind, 'runtime');
      assert.equal(await who(main, '/', { host: 'rtnew.com' }), 'rtnew.0');
      assert.equal(await haproxyGeneration(main), gen);
    });

    it('a WebSocket-style upgrade works through the proxy and survives three reloads caused by other services', async () => {
      await service(main, { serviceName: 'ws', servicePath: '/ws' });
      const sock = connect(main.httpPort, '127.0.0.1');
      try {
        const read = reader(sock);
        sock.write(
          'GET /ws/chat HTTP/1.1\r\nHost: ws.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
            'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
        );
        const head = await read('\r\n\r\n');
        assert.match(head, /^HTTP\/1\.1 101 /);
        assert.match(head, /x-instance: ws\.0/i);
        assert.match(head, /sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/i);
        sock.write('ping-0\n');
        assert.equal(await read('\n'), 'ping-0\n');
        // Each change is a pattern route (a frontend change): a reload, and a new HAProxy worker.
        // The old worker keeps the tunnel (hard-stop-after follows TIMEOUT_TUNNEL, 3600 s by default).
        for (let n = 1; n <= 3; n++) {
          const gen = await haproxyGeneration(main);
          await service(main, { serviceName: `wsreload${n}`, pathType: 'path_reg', servicePath: `^/reloaded${n}/[0-9]+$` });
          assert.equal((await lastApply(main)).kind, 'reload');
          assert.notEqual(await haproxyGeneration(main), gen);
          assert.equal(await who(main, `/reloaded${n}/1`), `wsreload${n}.0`);
          sock.write(`ping-${n}\n`);
          assert.equal(await read('\n'), `ping-${n}\n`, `the upgraded connection outlives reload ${n}`);
        }
      } finally {
        sock.destroy();
      }
    });
  });
});

/** Reads a socket up to (and including) a delimiter. */
function reader(sock: Socket): (until: string, timeoutMs?: number) => Promise<string> {
  let buf = '';
  let wake: (() => void) | undefined;
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buf += d;
    wake?.();
  });
  sock.on('error', () => wake?.());
  return async (until, timeoutMs = 5000) => {
    const deadline = Date.now() + timeoutMs;
    while (!buf.includes(until)) {
      if (Date.now() > deadline || sock.destroyed) throw new Error(`no ${JSON.stringify(until)} in ${JSON.stringify(buf)}`);
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 50);
      });
    }
    const i = buf.indexOf(until) + until.length;
    const out = buf.slice(0, i);
    buf = buf.slice(i);
    return out;
  };
}
