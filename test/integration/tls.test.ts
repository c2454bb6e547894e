import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { certNameFrom, checkCertName, orderCertNames } from '../../src/certs/pem.js';
import { loadSettings } from '../../src/config/settings.js';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { FlowProxy } from '../../src/proxy.js';
import { createLogger } from '../../src/util/log.js';
import { freePort } from '../../src/util/ports.js';
import {
  callApi,
  eventually,
  haproxyGeneration,
  registerLikeRegistrator,
  startConsul,
  stopConsul,
  type TestProxy,
  tempDir,
  track,
} from '../helpers/harness.js';

/**
 * TLS termination: certificates from PUT cert, serviceCert, CERTS_DIR and Consul KV; SNI picks the
 * certificate, PREFERRED_CERTIFICATE the default; a further certificate goes live without a reload;
 * no key material ever leaves the proxy through the API or its log. All traffic to 127.0.0.1.
 */

interface Pem {
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
  readonly fingerprint256: string;
}

function makeCert(dir: string, cn: string, sans: string[] = [cn]): Pem {
  const base = path.join(dir, `${cn}-${Math.random().toString(36).slice(2, 8)}`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=${sans.map((s) => `DNS:${s}`).join(',')}`, '-keyout', `${base}.key`, '-out', `${base}.crt`],
    { stdio: 'ignore' },
  );
  const cert = readFileSync(`${base}.crt`, 'utf8');
  const key = readFileSync(`${base}.key`, 'utf8');
  return { cert, key, bundle: cert + key, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

/** The key's base64 lines: none of them may appear anywhere outside the proxy. */
function keyLines(p: Pem): string[] {
  return p.key.split('\n').filter((l) => l.length > 20 && !l.startsWith('-----'));
}

interface Hello {
  readonly cn: string;
  readonly fingerprint256: string;
  readonly alpn: string | false;
}

function hello(port: number, servername: string, alpn = ['h2', 'http/1.1'], maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<Hello> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ALPNProtocols: alpn, maxVersion }, () => {
      const peer = sock.getPeerCertificate();
      const out = { cn: String(peer.subject?.CN ?? ''), fingerprint256: peer.fingerprint256, alpn: sock.alpnProtocol ?? false };
      sock.end();
      resolve(out);
    });
    sock.setTimeout(5000, () => sock.destroy(new Error('TLS handshake timed out')));
    sock.on('error', reject);
  });
}

function httpsGet(port: number, host: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, servername: host, path: urlPath, rejectUnauthorized: false, headers: { Host: host, Connection: 'close' }, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function putCert(p: TestProxy, name: string | undefined, body: string, method = 'PUT'): Promise<{ status: number; body: Record<string, unknown>; text: string }> {
  const query = name === undefined ? '' : `?certName=${encodeURIComponent(name)}`;
  const res = await fetch(`${p.api}/cert${query}`, { method, ...(method === 'GET' || method === 'HEAD' ? {} : { body }) });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed, text };
}

type TlsProxy = TestProxy & { readonly tlsPort: number; readonly logs: string[] };

/** Like harness startProxy, with a TLS listener and every log line (debug included) kept. */
async function startTlsProxy(consulAddress: string, env: Record<string, string> = {}): Promise<TlsProxy> {
  const stateDir = env.STATE_DIR ?? tempDir();
  const httpPort = await freePort();
  const tlsPort = await freePort();
  const logs: string[] = [];
  const settings = loadSettings({
    CONSUL_ADDRESS: consulAddress,
    STATE_DIR: stateDir,
    PORT: '0',
    IP: '127.0.0.1',
    DEFAULT_PORTS: `${httpPort},${tlsPort}:ssl`,
    SECRETS_DIR: path.join(stateDir, 'no-secrets'),
    CONSUL_WATCH_WAIT: '30',
    ...env,
  });
  const proxy = await FlowProxy.start(
    settings,
    createLogger('debug', 'dfp', (l) => {
      logs.push(l);
    }),
  );
  track(proxy.haproxy.status().masterPid);
  await proxy.whenReady();
  return {
    proxy,
    api: `http://127.0.0.1:${proxy.apiPort}/v1/docker-flow-proxy`,
    http: `http://127.0.0.1:${httpPort}`,
    httpPort,
    tlsPort,
    stateDir,
    logs,
    async stop() {
      await proxy.stop();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

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

  const kvCertKeys = async (instance = 'docker-flow') => {
    const res = await fetch(`${consul.address}/v1/kv/${instance}/_dfp/certs/?keys`);
    return res.status === 404 ? [] : ((await res.json()) as string[]);
  };

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
    for (const method of ['GET', 'POST', 'DELETE']) {
      const res = await putCert(p1, 'x.com', a.bundle, method);
      assert.equal(res.status, 405, method);
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

  it('no key material in config, config?type=json, status or the log', async () => {
    const texts = [(await callApi(p1, 'config')).text, (await callApi(p1, 'config', { type: 'json' })).text, (await callApi(p1, 'status')).text, p1.logs.join('')];
    for (const text of texts) {
      assert.doesNotMatch(text, /PRIVATE KEY/);
      for (const pem of [a, a2, b, c]) for (const line of keyLines(pem)) assert.ok(!text.includes(line), 'a key line leaked');
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
