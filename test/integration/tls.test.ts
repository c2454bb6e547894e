import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createServer as tlsServer } from 'node:tls';
import { certNameFrom, checkCertName, orderCertNames } from '../../src/certs/pem.js';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { callApi, eventually, haproxyGeneration, registerLikeRegistrator, startConsul, stopConsul, tempDir } from '../helpers/harness.js';
import { certCall, hello, httpsGet, keyLines, makeCert, type Pem, putCert, startTlsProxy, storedCertKeys, type TlsProxy } from '../helpers/tls.js';

/**
 * TLS termination: certificates from PUT cert, serviceCert, CERTS_DIR and Consul KV; SNI picks the
 * certificate, PREFERRED_CERTIFICATE the default; a further certificate goes live without a reload;
 * no key material ever leaves the proxy through the API or its log. All traffic to 127.0.0.1.
 */

describe('TLS termination with certificates', () => {
  let consul: ConsulAgent;
  let backend: Server;
  let certDir: string;
  const proxies: TlsProxy[] = [];
  let a: Pem;
  let a2: Pem;
  let b: Pem;
  let c: Pem;
  let p1: TlsProxy;

  async function proxy(env: Record<string, string> = {}): Promise<TlsProxy> {
    const p = await startTlsProxy(consul.address, env);
    proxies.push(p);
    return p;
  }

  const kvCertKeys = (instance = 'docker-flow') => storedCertKeys(consul.address, instance);

  before(async () => {
    certDir = tempDir();
    a = makeCert(certDir, 'a.com');
    a2 = makeCert(certDir, 'a.com', ['a.com', 'www.a.com']);
    b = makeCert(certDir, 'b.com');
    c = makeCert(certDir, 'c.com');
    consul = await startConsul();
    // A backend that answers with the request headers it saw.
    backend = createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(req.url === '/health' ? '{}' : JSON.stringify({ headers: req.headers }));
    });
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    await registerLikeRegistrator(consul.address, { name: 'echo', container: 'echo.0', exposedPort: 8080, hostPort: (backend.address() as AddressInfo).port });
    p1 = await proxy();
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    await new Promise<void>((resolve) => {
      backend?.close(() => resolve());
      backend?.closeAllConnections();
    });
    if (consul) await stopConsul(consul);
    rmSync(certDir, { recursive: true, force: true });
  });

  it('binds no TLS listener before there is a certificate', async () => {
    assert.doesNotMatch((await callApi(p1, 'config')).text, /ssl crt-list/);
    await assert.rejects(hello(p1.tlsPort, 'a.com'));
    assert.deepEqual((await callApi(p1, 'certs')).body, { Status: 'OK', Message: '', Certs: [] });
  });

  it('PUT cert: 200, and HAProxy serves it for SNI a.com with ALPN h2', async () => {
    const res = await putCert(p1, 'a.com', a.bundle);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.Status, 'OK');
    const h = await hello(p1.tlsPort, 'a.com');
    assert.equal(h.cn, 'a.com');
    assert.equal(h.fingerprint256, a.fingerprint256);
    assert.equal(h.alpn, 'h2');
    assert.equal((await hello(p1.tlsPort, 'a.com', ['http/1.1'])).alpn, 'http/1.1');
    assert.match((await callApi(p1, 'config')).text, new RegExp(`bind \\*:${p1.tlsPort} ssl crt-list \\S+crt-list.txt alpn h2,http/1.1`));
    assert.deepEqual(await kvCertKeys(), ['docker-flow/_dfp/certs/a.com']);
  });

  it('refuses bad certificates with 400 and changes nothing', async () => {
    const config = (await callApi(p1, 'config')).text;
    const generation = await haproxyGeneration(p1);
    const cases: [string | undefined, string, string][] = [
      ['x.com', '', 'empty body'],
      ['x.com', 'hello, not a certificate', 'not a certificate'],
      ['x.com', a.cert, 'certificate without key'],
      ['x.com', a.cert + b.key, 'key of another certificate'],
      ['x.com', a.cert.replace(/[A-Za-z]{10}\n/, 'AAAAAAAAAA\n') + a.key, 'damaged certificate'],
      ['../x', a.bundle, 'certName with ..'],
      ['.hidden', a.bundle, 'certName with a leading dot'],
      ['a/b', a.bundle, 'certName with /'],
      [undefined, a.bundle, 'no certName'],
      ['a.com', a.cert + b.key, 'replacement with a mismatched key'],
    ];
    for (const [name, body, what] of cases) {
      const res = await putCert(p1, name, body);
      assert.equal(res.status, 400, `${what}: ${res.text}`);
      assert.equal(res.body.Status, 'NOK', what);
      assert.doesNotMatch(res.text, /PRIVATE KEY|BEGIN/, what);
    }
    for (const method of ['GET', 'POST', 'PATCH']) {
      const res = await putCert(p1, 'x.com', a.bundle, method);
      assert.equal(res.status, 405, method);
      assert.equal(res.body.Code, 'DFP_ERR_METHOD_NOT_ALLOWED', method);
    }
    // DELETE of a certificate that does not exist: 404 naming certName; a bad name: 400.
    const unknown = await certCall(p1, 'DELETE', 'x.com');
    assert.equal(unknown.status, 404, unknown.text);
    assert.equal(unknown.body.Code, 'DFP_ERR_NOT_FOUND');
    assert.equal(unknown.body.Parameter, 'certName');
    assert.match(String(unknown.body.Message), /x\.com/);
    for (const name of ['../a.com', '.a.com', undefined]) {
      const res = await certCall(p1, 'DELETE', name);
      assert.equal(res.status, 400, `${name}: ${res.text}`);
      assert.equal(res.body.Parameter, 'certName');
    }
    assert.equal((await callApi(p1, 'config')).text, config);
    assert.equal(await haproxyGeneration(p1), generation);
    assert.deepEqual(
      ((await callApi(p1, 'certs')).body.Certs as { ProxyServiceName: string }[]).map((x) => x.ProxyServiceName),
      ['a.com'],
    );
    assert.deepEqual(await kvCertKeys(), ['docker-flow/_dfp/certs/a.com']);
    assert.equal((await hello(p1.tlsPort, 'a.com')).fingerprint256, a.fingerprint256);
  });

  it('a second certificate goes live without a reload, and SNI selects it', async () => {
    const generation = await haproxyGeneration(p1);
    const res = await putCert(p1, 'b.com', b.bundle);
    assert.equal(res.status, 200, res.text);
    assert.equal((await hello(p1.tlsPort, 'b.com')).cn, 'b.com');
    assert.equal((await hello(p1.tlsPort, 'a.com')).cn, 'a.com');
    // Unknown names get the first certificate of the crt-list (by name without PREFERRED_CERTIFICATE).
    assert.equal((await hello(p1.tlsPort, 'unknown.example')).cn, 'a.com');
    assert.equal(await haproxyGeneration(p1), generation, 'HAProxy did not reload');
    assert.match(p1.logs.join(''), /b\.com live through the runtime API/);
  });

  it('a replaced certificate goes live without a reload too', async () => {
    const generation = await haproxyGeneration(p1);
    assert.equal((await putCert(p1, 'a.com', a2.bundle)).status, 200);
    assert.equal((await hello(p1.tlsPort, 'a.com')).fingerprint256, a2.fingerprint256);
    assert.equal((await hello(p1.tlsPort, 'www.a.com')).fingerprint256, a2.fingerprint256);
    assert.equal(await haproxyGeneration(p1), generation, 'HAProxy did not reload');
  });

  it('backends see X-Forwarded-Proto: https on TLS requests only', async () => {
    const res = await callApi(p1, 'reconfigure', { serviceName: 'echo', servicePath: '/echo' });
    assert.equal(res.status, 200, res.text);
    const over = await eventually('the echo route over TLS', () => httpsGet(p1.tlsPort, 'a.com', '/echo'), (r) => r.status === 200);
    assert.equal((JSON.parse(over.body) as { headers: Record<string, string> }).headers['x-forwarded-proto'], 'https');
    const plain = await fetch(`${p1.http}/echo`, { headers: { Connection: 'close' } });
    assert.equal(plain.status, 200);
    assert.notEqual(((await plain.json()) as { headers: Record<string, string> }).headers['x-forwarded-proto'], 'https');
  });

  it('httpsPort: a second backend for requests that arrive on srcHttpsPort (the TLS listener by default)', async () => {
    // Requests per backend, from HAProxy's own counters (field 7: stot, total sessions).
    const served = async (backend: string) => {
      const line = (await p1.proxy.haproxy.adminCommand('show stat')).split('\n').find((l) => l.startsWith(`${backend},BACKEND,`));
      return Number(line?.split(',')[7] ?? Number.NaN);
    };
    const res = await callApi(p1, 'reconfigure', { serviceName: 'echo', aclName: 'two', servicePath: '/two', httpsPort: '8443' });
    assert.equal(res.status, 200, res.text);
    const dest = (await callApi(p1, 'config', { type: 'json' })).body.echo as { ServiceDest: { HttpsPort: number; SrcPort: number; SrcHttpsPort: number }[] };
    assert.deepEqual(
      dest.ServiceDest.map((d) => [d.HttpsPort, d.SrcPort, d.SrcHttpsPort]),
      [[8443, p1.httpPort, p1.tlsPort]],
      'srcPort and srcHttpsPort default to the first plain and TLS listeners',
    );
    const [plainBefore, httpsBefore] = [await served('two-be_0'), await served('https-two-be8443_0')];
    assert.equal((await eventually('the https backend over TLS', () => httpsGet(p1.tlsPort, 'a.com', '/two'), (r) => r.status === 200)).status, 200);
    assert.equal((await fetch(`${p1.http}/two`, { headers: { Connection: 'close' } })).status, 200);
    assert.equal(await served('https-two-be8443_0'), httpsBefore + 1, 'the TLS request went to the https backend');
    assert.equal(await served('two-be_0'), plainBefore + 1, 'the plain request went to the first backend');
    // srcHttpsPort without httpsPort, or on a port HAProxy does not listen on: 400 naming it, nothing changed.
    for (const params of [{ srcHttpsPort: String(p1.tlsPort) }, { httpsPort: '8443', srcHttpsPort: '1' }] as Record<string, string>[]) {
      const bad = await callApi(p1, 'reconfigure', { serviceName: 'echo', aclName: 'two', servicePath: '/other', ...params });
      assert.equal(bad.status, 400, bad.text);
      assert.equal(bad.body.Parameter, 'srcHttpsPort');
    }
    assert.equal((await callApi(p1, 'remove', { serviceName: 'echo' })).status, 200);
  });

  it('reqMode=sni shares the TLS listener: a claimed server name passes through untouched, the rest is terminated here', async () => {
    // An instance that terminates TLS itself, with a certificate the proxy does not have.
    const own = makeCert(certDir, 'pass.example');
    const server = tlsServer({ key: own.key, cert: own.cert }, (sock) => sock.end('hello from pass.0\n'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await registerLikeRegistrator(consul.address, { name: 'pass', container: 'pass.0', exposedPort: 443, hostPort: (server.address() as AddressInfo).port });
      assert.equal((await callApi(p1, 'reconfigure', { serviceName: 'echo', servicePath: '/echo' })).status, 200);
      const res = await callApi(p1, 'reconfigure', { serviceName: 'pass', reqMode: 'sni', srcPort: String(p1.tlsPort), serviceDomain: 'pass.example' });
      assert.equal(res.status, 200, res.text);
      // Passed through: the instance's own certificate, and its own answer.
      assert.equal((await hello(p1.tlsPort, 'pass.example')).fingerprint256, own.fingerprint256);
      // Not claimed: terminated by frontend services with the stored certificate, routed as HTTP,
      // the client's address kept (PROXY protocol between the two frontends).
      assert.equal((await hello(p1.tlsPort, 'a.com')).fingerprint256, a2.fingerprint256);
      const echo = await httpsGet(p1.tlsPort, 'a.com', '/echo');
      assert.equal(echo.status, 200);
      const headers = (JSON.parse(echo.body) as { headers: Record<string, string> }).headers;
      assert.equal(headers['x-forwarded-proto'], 'https');
      assert.equal(headers['x-forwarded-for'], '127.0.0.1');
      // A plain tcp service cannot take a TLS listener.
      const plain = await callApi(p1, 'reconfigure', { serviceName: 'rawtls', reqMode: 'tcp', srcPort: String(p1.tlsPort) });
      assert.equal(plain.status, 400, plain.text);
      assert.equal(plain.body.Parameter, 'srcPort');
      assert.equal((await callApi(p1, 'remove', { serviceName: 'pass' })).status, 200);
      assert.equal((await hello(p1.tlsPort, 'a.com')).fingerprint256, a2.fingerprint256, 'the listener is back in frontend services');
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('serviceCert on reconfigure stores a certificate named after the first domain', async () => {
    const bad = await callApi(p1, 'reconfigure', { serviceName: 'cee', serviceDomain: 'c.com', servicePath: '/c', serviceCert: c.cert.replace(/\n/g, '\\n') });
    assert.equal(bad.status, 400, bad.text);
    assert.equal(bad.body.Parameter, 'serviceCert');
    assert.equal((await callApi(p1, 'config', { type: 'json' })).body.cee, undefined, 'nothing changed');
    const res = await callApi(p1, 'reconfigure', { serviceName: 'cee', serviceDomain: 'c.com', servicePath: '/c', serviceCert: c.bundle.replace(/\n/g, '\\n') });
    assert.equal(res.status, 200, res.text);
    assert.doesNotMatch(res.text, /PRIVATE KEY|BEGIN CERTIFICATE/);
    assert.equal((await hello(p1.tlsPort, 'c.com')).fingerprint256, c.fingerprint256);
  });

  it('certs lists names, domains, expiry and fingerprints, never key material', async () => {
    const res = await callApi(p1, 'certs');
    assert.equal(res.status, 200);
    assert.equal(res.body.Status, 'OK');
    const certs = res.body.Certs as Record<string, unknown>[];
    assert.deepEqual(
      certs.map((x) => [x.ProxyServiceName, x.Domains, x.Fingerprint256]),
      [
        ['a.com', ['a.com', 'www.a.com'], a2.fingerprint256],
        ['b.com', ['b.com'], b.fingerprint256],
        ['c.com', ['c.com'], c.fingerprint256],
      ],
    );
    for (const x of certs) {
      assert.match(String(x.Subject), /CN=/);
      assert.ok(Date.parse(String(x.NotAfter)) > Date.now() + 20 * 86_400_000, 'notAfter is ~30 days ahead');
    }
    assert.doesNotMatch(res.text, /PRIVATE KEY|BEGIN|CertContent/);
  });

  /** Responses of the new certificate paths (dry runs, DELETE, distribute), checked for key material below. */
  const certAnswers: string[] = [];
  const dryRunPems: Pem[] = [];

  it('dry runs of PUT and DELETE cert say what would happen, without key material, and change nothing', async () => {
    const generation = await haproxyGeneration(p1);
    const crtList = readFileSync(path.join(p1.stateDir, 'crt-list.txt'), 'utf8');
    const z = makeCert(certDir, 'z.com');
    dryRunPems.push(z);
    const live = (name: string) => path.join(p1.stateDir, 'certs-live', `${name}.pem`);
    const list = path.join(p1.stateDir, 'crt-list.txt');

    // A new certificate sorted last: added at the end of the crt-list at run time.
    const put = await certCall(p1, 'PUT', 'z.com', z.bundle, { dryRun: 'true' });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.body.DryRun, true);
    assert.equal(put.body.ApplyKind, 'runtime');
    assert.deepEqual(put.body.Commands, [
      `new ssl cert ${live('z.com')}`,
      `set ssl cert ${live('z.com')} <<(certificate chain and private key, not shown)`,
      `commit ssl cert ${live('z.com')}`,
      `add ssl crt-list ${list} ${live('z.com')}`,
    ]);
    assert.match(String(put.body.Diff), new RegExp(`\\+${live('z.com').replace(/\./g, '\\.')}`));
    assert.match(String(put.body.Message), /dry run: nothing was changed; would store docker-flow\/_dfp\/certs\/z\.com in Consul KV/);
    // A bad body is refused as without dryRun.
    assert.equal((await certCall(p1, 'PUT', 'z.com', z.cert, { dryRun: 'true' })).status, 400);

    // Deleting a certificate that is not the default: the runtime API, in HAProxy's order.
    const del = await certCall(p1, 'DELETE', 'b.com', '', { dryRun: 'true' });
    assert.equal(del.status, 200, del.text);
    assert.equal(del.body.ApplyKind, 'runtime');
    assert.deepEqual(del.body.Commands, [`del ssl crt-list ${list} ${live('b.com')}`, `del ssl cert ${live('b.com')}`]);
    assert.match(String(del.body.Diff), new RegExp(`^-${live('b.com').replace(/\./g, '\\.')}$`, 'm'));
    assert.match(String(del.body.Message), /would delete docker-flow\/_dfp\/certs\/b\.com from Consul KV/);

    // The default certificate (first of the crt-list): HAProxy refuses that at run time, so a reload.
    const delDefault = await certCall(p1, 'DELETE', 'a.com', '', { dryRun: 'true' });
    assert.equal(delDefault.body.ApplyKind, 'reload', delDefault.text);
    assert.deepEqual(delDefault.body.Commands, []);
    assert.match(String((delDefault.body.ReloadBecause as string[])[0]), /a\.com is the default certificate/);

    certAnswers.push(put.text, del.text, delDefault.text);
    assert.equal(await haproxyGeneration(p1), generation, 'nothing reloaded');
    assert.equal(readFileSync(list, 'utf8'), crtList, 'the crt-list is unchanged');
    assert.deepEqual(
      ((await callApi(p1, 'certs')).body.Certs as { ProxyServiceName: string }[]).map((x) => x.ProxyServiceName),
      ['a.com', 'b.com', 'c.com'],
    );
    assert.equal((await hello(p1.tlsPort, 'b.com')).fingerprint256, b.fingerprint256);
  });

  it('no key material in config, config?type=json, status, the new cert answers or the log', async () => {
    const texts = [(await callApi(p1, 'config')).text, (await callApi(p1, 'config', { type: 'json' })).text, (await callApi(p1, 'status')).text, ...certAnswers, p1.logs.join('')];
    assert.ok(certAnswers.length >= 3, 'the dry-run answers were collected');
    for (const text of texts) {
      assert.doesNotMatch(text, /PRIVATE KEY/);
      for (const pem of [a, a2, b, c, ...dryRunPems]) for (const line of keyLines(pem)) assert.ok(!text.includes(line), 'a key line leaked');
    }
    assert.ok(p1.logs.length > 10, 'the log was captured');
  });

  it('certificates survive a restart with a fresh STATE_DIR, and PREFERRED_CERTIFICATE picks the default', async () => {
    await p1.stop();
    proxies.splice(proxies.indexOf(p1), 1);
    const p2 = await proxy({ PREFERRED_CERTIFICATE: 'nomatch*,b.*' });
    assert.equal((await hello(p2.tlsPort, 'a.com')).fingerprint256, a2.fingerprint256);
    assert.equal((await hello(p2.tlsPort, 'b.com')).fingerprint256, b.fingerprint256);
    assert.equal((await hello(p2.tlsPort, 'c.com')).fingerprint256, c.fingerprint256);
    assert.equal((await hello(p2.tlsPort, 'unknown.example')).cn, 'b.com', 'the preferred certificate is the default');
    assert.equal(readFileSync(path.join(p2.stateDir, 'crt-list.txt'), 'utf8').split('\n')[0], path.join(p2.stateDir, 'certs-live', 'b.com.pem'));
    assert.equal(
      ((await callApi(p2, 'certs')).body.Certs as unknown[]).length,
      3,
    );
    // A replica follows the KV prefix: a certificate stored through another replica goes live here.
    const p3 = await proxy();
    const d = makeCert(certDir, 'd.com');
    assert.equal((await putCert(p3, 'd.com', d.bundle)).status, 200);
    await eventually('d.com on the other replica', () => hello(p2.tlsPort, 'd.com'), (h) => h.fingerprint256 === d.fingerprint256);
    assert.equal((await hello(p2.tlsPort, 'unknown.example')).cn, 'b.com');
  });

  it('SSL_BIND_OPTIONS and SSL_BIND_CIPHERS reach the TLS listeners', async () => {
    const dir = path.join(tempDir(), 'certs');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'a.com.pem'), a.bundle);
    const p = await proxy({ PROXY_INSTANCE_NAME: 'ssl-options', CERTS_DIR: dir, SSL_BIND_OPTIONS: 'ssl-min-ver TLSv1.3 no-tls-tickets', SSL_BIND_CIPHERS: 'ECDHE-RSA-AES128-GCM-SHA256:!aNULL' });
    try {
      const config = (await callApi(p, 'config')).text;
      assert.match(config, /^ {4}ssl-default-bind-options ssl-min-ver TLSv1\.3 no-tls-tickets$/m);
      assert.match(config, /^ {4}ssl-default-bind-ciphers ECDHE-RSA-AES128-GCM-SHA256:!aNULL$/m);
      assert.equal((await hello(p.tlsPort, 'a.com')).cn, 'a.com', 'TLS 1.3 is served');
      await assert.rejects(hello(p.tlsPort, 'a.com', ['http/1.1'], 'TLSv1.2'), 'TLS 1.2 is refused');
    } finally {
      rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it('serves a certificate from CERTS_DIR at start-up', async () => {
    const dir = path.join(tempDir(), 'certs');
    mkdirSync(dir);
    const e = makeCert(certDir, 'e.com');
    writeFileSync(path.join(dir, 'e.com.pem'), e.bundle);
    writeFileSync(path.join(dir, 'broken.pem'), 'not a certificate');
    const p = await proxy({ PROXY_INSTANCE_NAME: 'other', CERTS_DIR: dir });
    try {
      assert.equal((await hello(p.tlsPort, 'e.com')).fingerprint256, e.fingerprint256);
      const certs = (await callApi(p, 'certs')).body.Certs as Record<string, unknown>[];
      assert.deepEqual(
        certs.map((x) => [x.ProxyServiceName, x.Source]),
        [['e.com', 'dir']],
      );
      assert.match(p.logs.join(''), /skipping certificate \S+broken\.pem/);
    } finally {
      rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });
});

describe('certificate helpers', () => {
  it('orders the crt-list: PREFERRED_CERTIFICATE globs first, in glob order, then by name', () => {
    assert.deepEqual(orderCertNames(['c', 'b.com', 'a', 'b.org', 'x'], []), ['a', 'b.com', 'b.org', 'c', 'x']);
    assert.deepEqual(orderCertNames(['c', 'b.com', 'a', 'b.org', 'x'], ['x', 'b.*']), ['x', 'b.com', 'b.org', 'a', 'c']);
    assert.deepEqual(orderCertNames(['a', 'a.b'], ['a?b', 'nomatch']), ['a.b', 'a']);
  });

  it('certName grammar and names derived from serviceDomain', () => {
    for (const ok of ['a', 'a.com', 'A-1_b.c']) assert.equal(checkCertName('certName', ok), ok);
    for (const bad of [undefined, '', '../x', '.x', 'a/b', 'a b', '-a', 'a\\b', 'x'.repeat(201)]) assert.throws(() => checkCertName('certName', bad), { parameter: 'certName' } as object);
    assert.equal(certNameFrom('*.example.com'), 'wildcard.example.com');
    assert.equal(certNameFrom('a.com'), 'a.com');
    assert.equal(certNameFrom('../../etc'), 'etc');
  });
});
