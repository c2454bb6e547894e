import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { type IncomingHttpHeaders, type IncomingMessage, request } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { loadSettings } from '../../src/config/settings.js';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { SettingsError } from '../../src/errors.js';
import { freePort } from '../../src/util/ports.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import {
  type ApiAnswer,
  type Backend,
  callApi,
  deregister,
  type Echo,
  eventually,
  haproxyGeneration,
  liveConfig,
  registerLikeRegistrator,
  startBackend,
  startConsul,
  startProxy,
  stopConsul,
  type TestProxy,
  tempDir,
} from '../helpers/harness.js';

/**
 * Settings and per-service/per-destination options the docs promise, end to end on a real HAProxy
 * and Consul (127.0.0.1 only): sticky sessions (AC-25), entry ports (AC-08), environment settings
 * (AC-21), backend timeouts, compression, client certificates and TLS to the instances.
 * One Consul serves every proxy; each proxy has its own PROXY_INSTANCE_NAME.
 */

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  /** The body as received (still compressed when Content-Encoding says so). */
  readonly body: Buffer;
  /** The backend's echo, when one answered (decompressed when gzip). */
  readonly echo: Echo | undefined;
}

interface SendOptions {
  readonly host?: string;
  readonly headers?: Record<string, string>;
  /** TLS on the port (client certificate optional). */
  readonly tls?: { readonly cert?: string; readonly key?: string };
}

function parseEcho(status: number, headers: IncomingHttpHeaders, body: Buffer): Echo | undefined {
  if (status !== 200) return undefined;
  const text = (headers['content-encoding'] === 'gzip' ? gunzipSync(body) : body).toString('utf8');
  return text.startsWith('{"instance"') ? (JSON.parse(text) as Echo) : undefined;
}

/** One request to 127.0.0.1:port on a fresh connection, plain or TLS (SNI = host). */
function send(port: number, urlPath: string, opts: SendOptions = {}): Promise<Answer> {
  const host = opts.host ?? 'localhost';
  return new Promise((resolve, reject) => {
    const common = { host: '127.0.0.1', port, path: urlPath, agent: false as const, headers: { Host: host, Connection: 'close', ...opts.headers } };
    const onResponse = (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const status = res.statusCode ?? 0;
        resolve({ status, headers: res.headers, body, echo: parseEcho(status, res.headers, body) });
      });
    };
    const req = opts.tls
      ? https.request({ ...common, servername: host, rejectUnauthorized: false, ...(opts.tls.cert ? { cert: opts.tls.cert, key: opts.tls.key } : {}) }, onResponse)
      : request(common, onResponse);
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

async function who(port: number, urlPath: string, opts: SendOptions = {}): Promise<string | number> {
  const a = await send(port, urlPath, opts);
  return a.echo?.instance ?? a.status;
}

interface ApplyRecord {
  readonly kind: string;
  readonly trigger: string;
  readonly generation: number;
}

async function applies(p: TestProxy): Promise<ApplyRecord[]> {
  return (await callApi(p, 'status')).body.Applies as ApplyRecord[];
}

/**
 * haproxy.cfg after a forced reload: a service added through the runtime API serves from a spare
 * backend (`dfp-spare-N`) until a reload gives every backend its canonical name.
 */
async function canonicalConfig(p: TestProxy): Promise<string> {
  const res = await callApi(p, 'reload');
  assert.equal(res.status, 200, res.text);
  return liveConfig(p);
}

/** The lines of one section of haproxy.cfg (`defaults`, `global`, `backend x`), indentation trimmed. */
function section(config: string, header: string): string[] {
  const lines = config.split('\n');
  const start = lines.indexOf(header);
  assert.ok(start >= 0, `no section ${header} in:\n${config}`);
  const out: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (!line.startsWith(' ')) break;
    out.push(line.trim());
  }
  return out;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed certificate for `cn`: {cert, key}. */
function selfSigned(dir: string, cn: string): { cert: string; key: string } {
  const base = path.join(dir, cn);
  openssl(['req', '-x509', ...EC, '-days', '30', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`, '-keyout', `${base}.key`, '-out', `${base}.crt`]);
  return { cert: readFileSync(`${base}.crt`, 'utf8'), key: readFileSync(`${base}.key`, 'utf8') };
}

/** A certificate for `cn` signed by the CA at `ca` (.crt/.key). */
function signedBy(dir: string, ca: string, cn: string): { cert: string; key: string } {
  const base = path.join(dir, cn);
  openssl(['req', ...EC, '-subj', `/CN=${cn}`, '-keyout', `${base}.key`, '-out', `${base}.csr`]);
  openssl(['x509', '-req', '-in', `${base}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '30', '-out', `${base}.crt`]);
  return { cert: readFileSync(`${base}.crt`, 'utf8'), key: readFileSync(`${base}.key`, 'utf8') };
}

/** The value of cookie `name` from a response's Set-Cookie headers. */
function cookieOf(a: Answer, name: string): string | undefined {
  for (const c of a.headers['set-cookie'] ?? []) {
    const m = new RegExp(`^${name}=([^;]*)`).exec(c);
    if (m) return m[1];
  }
  return undefined;
}

describe('HTTP settings on a real HAProxy', { concurrency: true }, () => {
  let consul: ConsulAgent;
  const backends = new Map<string, Backend>();
  const proxies: TestProxy[] = [];
  const dirs: string[] = [];
  const servers: https.Server[] = [];

  before(async () => {
    consul = await startConsul();
  });

  after(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all([...backends.values()].map((b) => b.close()));
    for (const s of servers) {
      s.close();
      s.closeAllConnections();
    }
    if (consul) await stopConsul(consul);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function proxy(instanceName: string, env: Record<string, string> = {}): Promise<TestProxy> {
    const p = await startProxy(consul.address, { PROXY_INSTANCE_NAME: instanceName, CONSUL_WATCH_WAIT: '30', ...env });
    proxies.push(p);
    return p;
  }

  /** An echo instance `<container>` of Consul service `consulName`, started and registered once. */
  async function instance(consulName: string, container = `${consulName}.0`): Promise<{ backend: Backend; id: string }> {
    let b = backends.get(container);
    if (!b) {
      b = await startBackend(container);
      backends.set(container, b);
    }
    const { id } = await registerLikeRegistrator(consul.address, { name: consulName, container, exposedPort: 8080, hostPort: b.port });
    return { backend: b, id };
  }

  async function reconfigure(p: TestProxy, params: Record<string, string>): Promise<ApiAnswer> {
    const res = await callApi(p, 'reconfigure', params);
    assert.equal(res.status, 200, `reconfigure ${JSON.stringify(params)} -> ${res.text}`);
    return res;
  }

  /** Starts and registers `<serviceName>.0`, then reconfigures. */
  async function service(p: TestProxy, params: Record<string, string>): Promise<ApiAnswer> {
    await instance(params.serviceName ?? '');
    return reconfigure(p, params);
  }

  describe('one proxy with default settings, a TLS listener and CA_FILE', { concurrency: 1 }, () => {
    let main: TestProxy;
    let tlsPort: number;
    let certDir: string;
    let client: { cert: string; key: string };
    let stranger: { cert: string; key: string };
    // The sticky scenario: registration IDs, and the cookie and instance the client got.
    const ids = new Map<string, string>();
    let cookie = '';
    let stuck = '';

    before(async () => {
      certDir = tempDir();
      dirs.push(certDir);
      const ca = path.join(certDir, 'ca');
      openssl(['req', '-x509', ...EC, '-days', '30', '-subj', '/CN=Test client CA', '-keyout', `${ca}.key`, '-out', `${ca}.crt`]);
      client = signedBy(certDir, ca, 'client');
      stranger = selfSigned(certDir, 'stranger');
      tlsPort = await freePort();
      const httpPort = await freePort();
      main = await proxy('settings-main', { DEFAULT_PORTS: `${httpPort},${tlsPort}:ssl`, CA_FILE: `${ca}.crt` });
    });

    it('unset settings render their documented defaults (AC-21)', async () => {
      const config = await liveConfig(main);
      const defaults = section(config, 'defaults');
      for (const line of [
        'timeout connect 5s',
        'timeout client 20s',
        'timeout server 20s',
        'timeout queue 30s',
        'timeout tunnel 3600s',
        'timeout http-request 5s',
        'timeout http-keep-alive 15s',
        'option http-keep-alive',
      ]) {
        assert.ok(defaults.includes(line), `defaults has "${line}": ${defaults.join(' | ')}`);
      }
      assert.ok(!defaults.some((l) => l.startsWith('compression')), 'no compression without COMPRESSION_*');
      assert.ok(!section(config, 'global').some((l) => l.startsWith('tune.')), 'no extra global lines');
      // Plain HTTP is served (HTTPS_ONLY=false) and exact-host matching is not the default.
      await service(main, { serviceName: 'plain', servicePath: '/plain', serviceDomain: 'p.com' });
      const res = await send(main.httpPort, '/plain', { host: 'p.com', headers: { 'Accept-Encoding': 'gzip' } });
      assert.equal(res.echo?.instance, 'plain.0');
      assert.equal(res.headers['content-encoding'], undefined, 'no compression by default');
      assert.equal(await who(main.httpPort, '/plain', { host: 'p.com.example.net' }), 'plain.0', 'hdr_beg(host) by default');
    });

    it('sessionType=sticky-server: an added instance fills a server slot without a reload; a client with the cookie stays on its instance (AC-25)', async () => {
      ids.set('sticky.a', (await instance('sticky', 'sticky.a')).id);
      await reconfigure(main, { serviceName: 'sticky', servicePath: '/sticky', sessionType: 'sticky-server' });
      assert.equal(await who(main.httpPort, '/sticky'), 'sticky.a');
      const before = (await applies(main)).at(-1)?.generation ?? 0;
      ids.set('sticky.b', (await instance('sticky', 'sticky.b')).id);
      const seen = await eventually(
        'both sticky instances behind the proxy',
        async () => {
          const s = new Set<string | number>();
          for (let i = 0; i < 6; i++) s.add(await who(main.httpPort, '/sticky'));
          return [...s].sort();
        },
        (s) => s.length === 2,
      );
      assert.deepEqual(seen, ['sticky.a', 'sticky.b'], 'without a cookie both instances answer');
      // The record is written once the reload is confirmed, which can be after the new worker serves.
      const change = await eventually(
        'the apply of the instance change in status',
        async () => (await applies(main)).filter((a) => a.generation > before && a.trigger.includes('sticky has 2 instances')),
        (c) => c.length > 0,
      );
      // Server slots carry their cookies in the config, so scaling a sticky service needs no reload.
      assert.ok(
        change.every((a) => a.kind === 'runtime'),
        `an instance added to a sticky service goes through the runtime API: ${JSON.stringify(change)}`,
      );
      const backend = section(await liveConfig(main), 'backend sticky-be_0');
      assert.ok(backend.includes('cookie sticky insert indirect nocache'), backend.join(' | '));
      assert.equal(backend.filter((l) => /^server (s\d+) 127\.0\.0\.1:\d+ check cookie \1 {2}# host1:sticky\.[ab]:\d+$/.test(l)).length, 2, backend.join(' | '));
    });

    it('the sticky client keeps its instance over many requests and across a reload caused by another service (AC-25)', async () => {
      const first = await send(main.httpPort, '/sticky');
      cookie = cookieOf(first, 'sticky') ?? '';
      assert.ok(cookie !== '', `Set-Cookie sticky=…: ${JSON.stringify(first.headers['set-cookie'])}`);
      stuck = first.echo?.instance ?? '';
      assert.match(stuck, /^sticky\.[ab]$/);
      const withCookie = { headers: { Cookie: `sticky=${cookie}` } };
      for (let i = 0; i < 20; i++) assert.equal(await who(main.httpPort, '/sticky', withCookie), stuck, `request ${i}`);
      const generation = await haproxyGeneration(main);
      await service(main, { serviceName: 'stickyreload', pathType: 'path_reg', servicePath: '^/sr/[0-9]+$' });
      assert.equal((await applies(main)).at(-1)?.kind, 'reload');
      assert.notEqual(await haproxyGeneration(main), generation, 'HAProxy reloaded');
      assert.equal(await who(main.httpPort, '/sr/1'), 'stickyreload.0');
      for (let i = 0; i < 20; i++) assert.equal(await who(main.httpPort, '/sticky', withCookie), stuck, `after the reload, request ${i}`);
    });

    it('when the sticky instance leaves Consul, the client with the old cookie moves to the live one (AC-25)', async () => {
      const other = stuck === 'sticky.a' ? 'sticky.b' : 'sticky.a';
      // The instance keeps running: only its deregistration can move the client.
      await deregister(consul.address, ids.get(stuck) ?? '');
      const withOld = { headers: { Cookie: `sticky=${cookie}` } };
      const moved = await eventually('the old cookie reaching the live instance', () => send(main.httpPort, '/sticky', withOld), (a) => a.echo?.instance === other);
      const fresh = cookieOf(moved, 'sticky');
      assert.ok(fresh !== undefined && fresh !== cookie, `a new cookie for the live instance: ${JSON.stringify(moved.headers['set-cookie'])}`);
      for (let i = 0; i < 10; i++) assert.equal(await who(main.httpPort, '/sticky', withOld), other);
      for (let i = 0; i < 10; i++) assert.equal(await who(main.httpPort, '/sticky', { headers: { Cookie: `sticky=${fresh}` } }), other);
    });

    it('port=8080 with servicePath.1=/a and servicePath.2=/b: two destinations on 8080, none with index 0 (AC-08)', async () => {
      const res = await service(main, { serviceName: 'ab', port: '8080', 'servicePath.1': '/a', 'servicePath.2': '/b' });
      const dests = res.body.ServiceDest as { Index: number; Port: string; ServicePath: string[] }[];
      assert.deepEqual(
        dests.map((d) => [d.Index, d.Port, d.ServicePath]),
        [
          [1, '8080', ['/a']],
          [2, '8080', ['/b']],
        ],
      );
      const config = await canonicalConfig(main);
      assert.match(config, /^backend ab-be8080_1$/m);
      assert.match(config, /^backend ab-be8080_2$/m);
      assert.doesNotMatch(config, /ab-be8080_0/);
      assert.equal(await who(main.httpPort, '/a/x'), 'ab.0');
      assert.equal(await who(main.httpPort, '/b/x'), 'ab.0');
      assert.equal(await who(main.httpPort, '/c/x'), 503);
    });

    it('timeoutServer=1 on one destination: a slow answer is 504 there and 200 on the other; timeoutTunnel is rendered', async () => {
      await service(main, { serviceName: 'tmo', 'servicePath.1': '/tmo1', 'timeoutServer.1': '1', 'timeoutTunnel.1': '7', 'servicePath.2': '/tmo2' });
      const b1 = section(await liveConfig(main), 'backend tmo-be_1');
      assert.ok(b1.includes('timeout server 1s'), b1.join(' | '));
      assert.ok(b1.includes('timeout tunnel 7s'), b1.join(' | '));
      const b2 = section(await liveConfig(main), 'backend tmo-be_2');
      assert.ok(!b2.some((l) => l.startsWith('timeout')), b2.join(' | '));
      const [fast, slow, other] = await Promise.all([send(main.httpPort, '/tmo1/quick'), send(main.httpPort, '/tmo1/slow'), send(main.httpPort, '/tmo2/slow')]);
      assert.equal(fast.status, 200);
      assert.equal(slow.status, 504);
      assert.equal(other.status, 200);
      assert.equal(other.echo?.path, '/tmo2/slow');
    });

    it('compressionAlgo=gzip&compressionType=application/json: gzip to a client that accepts it, identity otherwise', async () => {
      await service(main, { serviceName: 'gz', servicePath: '/gz', compressionAlgo: 'gzip', compressionType: 'application/json' });
      const zipped = await send(main.httpPort, '/gz/x', { headers: { 'Accept-Encoding': 'gzip' } });
      assert.equal(zipped.status, 200);
      assert.equal(zipped.headers['content-encoding'], 'gzip');
      assert.equal(zipped.echo?.instance, 'gz.0', 'the gzip body inflates to the echo');
      const identity = await send(main.httpPort, '/gz/x');
      assert.equal(identity.headers['content-encoding'], undefined);
      assert.equal(identity.echo?.path, '/gz/x');
      // Another service of the same proxy is not compressed.
      assert.equal((await send(main.httpPort, '/plain', { host: 'p.com', headers: { 'Accept-Encoding': 'gzip' } })).headers['content-encoding'], undefined);
    });

    it('verifyClientSsl=true with CA_FILE: 403 without a client certificate, 200 with one the CA signed', async () => {
      const server = selfSigned(certDir, 'a.com');
      const put = await fetch(`${main.api}/cert?certName=a.com`, { method: 'PUT', body: server.cert + server.key });
      assert.equal(put.status, 200, await put.text());
      await service(main, { serviceName: 'mtls', servicePath: '/mtls', verifyClientSsl: 'true' });
      const bind = (await liveConfig(main)).split('\n').find((l) => l.includes(`bind *:${tlsPort}`)) ?? '';
      assert.match(bind, / ca-file \S+ca\.crt verify optional/);
      const tls = { host: 'a.com' };
      assert.equal((await send(tlsPort, '/mtls', { ...tls, tls: {} })).status, 403);
      const ok = await send(tlsPort, '/mtls', { ...tls, tls: client });
      assert.equal(ok.status, 200);
      assert.equal(ok.echo?.instance, 'mtls.0');
      assert.equal(ok.echo?.headers['x-forwarded-proto'], 'https');
      // A certificate from another CA never reaches the instance (handshake refused, or 403).
      const foreign = await send(tlsPort, '/mtls', { ...tls, tls: stranger }).catch((e: Error) => e);
      assert.ok(foreign instanceof Error || foreign.status === 403, `foreign certificate: ${foreign instanceof Error ? foreign.message : foreign.status}`);
      // A service without verifyClientSsl answers without a client certificate, over TLS and plain HTTP.
      await service(main, { serviceName: 'nomtls', servicePath: '/nomtls' });
      assert.equal(await who(tlsPort, '/nomtls', { ...tls, tls: {} }), 'nomtls.0');
      assert.equal(await who(main.httpPort, '/nomtls'), 'nomtls.0');
      // Plain HTTP to the verifyClientSsl service has no certificate either.
      assert.equal((await send(main.httpPort, '/mtls')).status, 403);
    });

    it('sslVerifyNone=true: an https instance is reached; without it the plain-HTTP request fails', async () => {
      const pem = selfSigned(certDir, 'instance.local');
      const server = https.createServer({ cert: pem.cert, key: pem.key }, (req, res) => {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ instance: 'tlsapp.0', method: req.method, path: req.url, headers: req.headers }));
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      await registerLikeRegistrator(consul.address, { name: 'tlsapp', container: 'tlsapp.0', exposedPort: 8443, hostPort: (server.address() as AddressInfo).port });
      await reconfigure(main, { serviceName: 'tlsapp', servicePath: '/tlsapp' });
      const plain = await send(main.httpPort, '/tlsapp/x');
      assert.ok(plain.status === 502 || plain.status === 503, `plain HTTP to a TLS port: ${plain.status}`);
      await reconfigure(main, { serviceName: 'tlsapp', servicePath: '/tlsapp', sslVerifyNone: 'true' });
      const ok = await send(main.httpPort, '/tlsapp/x');
      assert.equal(ok.status, 200, `after sslVerifyNone=true (last apply ${JSON.stringify((await applies(main)).at(-1))})`);
      assert.equal(ok.echo?.instance, 'tlsapp.0');
      assert.equal(ok.echo?.path, '/tlsapp/x');
      assert.match(section(await canonicalConfig(main), 'backend tlsapp-be_0').join('\n'), /^server s1 127\.0\.0\.1:\d+ check ssl verify none {2}# host1:tlsapp\.0:8443$/m);
    });
  });

  describe('DEFAULT_PORTS and BIND_PORTS with srcPort (AC-08)', { concurrency: 1 }, () => {
    let p: TestProxy;
    let p1: number;
    let p2: number;

    before(async () => {
      p1 = await freePort();
      p2 = await freePort();
      p = await proxy('settings-ports', { DEFAULT_PORTS: String(p1), BIND_PORTS: String(p2) });
    });

    it('servicePath.N=/ with port.N and srcPort.N: each entry port reaches its own destination', async () => {
      const res = await service(p, {
        serviceName: 'ports',
        'servicePath.1': '/',
        'port.1': '8080',
        'srcPort.1': String(p1),
        'servicePath.2': '/',
        'port.2': '8081',
        'srcPort.2': String(p2),
        // Destination 2 marks its requests, so the instance shows which destination served them.
        'reqPathSearchReplace.2': '^/(.*),/p2/\\1',
      });
      const dests = res.body.ServiceDest as { Index: number; Port: string; SrcPort: number }[];
      assert.deepEqual(
        dests.map((d) => [d.Index, d.Port, d.SrcPort]),
        [
          [1, '8080', p1],
          [2, '8081', p2],
        ],
      );
      const config = await liveConfig(p);
      assert.match(config, new RegExp(`^    bind \\*:${p1}$`, 'm'));
      assert.match(config, new RegExp(`^    bind \\*:${p2}$`, 'm'));
      assert.match(config, /^backend ports-be8080_1$/m);
      assert.match(config, /^backend ports-be8081_2$/m);
      const one = await send(p1, '/x/y?q=1');
      assert.equal(one.echo?.instance, 'ports.0');
      assert.equal(one.echo?.path, '/x/y?q=1');
      const two = await send(p2, '/x/y?q=1');
      assert.equal(two.echo?.instance, 'ports.0');
      assert.equal(two.echo?.path, '/p2/x/y?q=1');
      assert.equal((await send(p1, '/')).echo?.path, '/');
      assert.equal((await send(p2, '/')).echo?.path, '/p2/');
    });
  });

  describe('environment settings given (AC-21)', { concurrency: 1 }, () => {
    let p: TestProxy;
    const env: Record<string, string> = {
      TIMEOUT_CONNECT: '4',
      TIMEOUT_CLIENT: '25',
      TIMEOUT_SERVER: '1',
      TIMEOUT_QUEUE: '31',
      TIMEOUT_TUNNEL: '1800',
      TIMEOUT_HTTP_REQUEST: '6',
      TIMEOUT_HTTP_KEEP_ALIVE: '16',
      EXTRA_GLOBAL: 'tune.ssl.default-dh-param 2048',
      EXTRA_FRONTEND: 'http-response set-header X-Extra yes,http-response set-header X-Extra2 yes',
      CONNECTION_MODE: 'httpclose',
      COMPRESSION_ALGO: 'gzip',
      COMPRESSION_TYPE: 'text/plain application/json',
    };

    before(async () => {
      const secrets = tempDir();
      dirs.push(secrets);
      // A Docker secret overrides the variable of the same name.
      writeFileSync(path.join(secrets, 'dfp_timeout_client'), '33\n');
      p = await proxy('settings-env', { ...env, SECRETS_DIR: secrets });
    });

    it('every TIMEOUT_*, CONNECTION_MODE and COMPRESSION_* lands in defaults; a secrets file overrides TIMEOUT_CLIENT', async () => {
      const config = await liveConfig(p);
      const defaults = section(config, 'defaults');
      for (const line of [
        'timeout connect 4s',
        'timeout client 33s',
        'timeout server 1s',
        'timeout queue 31s',
        'timeout tunnel 1800s',
        'timeout http-request 6s',
        'timeout http-keep-alive 16s',
        'option httpclose',
        'compression algo gzip',
        'compression type text/plain application/json',
      ]) {
        assert.ok(defaults.includes(line), `defaults has "${line}": ${defaults.join(' | ')}`);
      }
      assert.ok(!defaults.includes('timeout client 25s'), 'the secret wins over the variable');
      assert.ok(!defaults.includes('option http-keep-alive'));
    });

    it('EXTRA_GLOBAL and EXTRA_FRONTEND: each comma starts a line; the client sees both extra headers', async () => {
      const config = await liveConfig(p);
      assert.ok(section(config, 'global').includes('tune.ssl.default-dh-param 2048'));
      const frontend = section(config, 'frontend services');
      assert.ok(frontend.includes('http-response set-header X-Extra yes'), frontend.join(' | '));
      assert.ok(frontend.includes('http-response set-header X-Extra2 yes'), frontend.join(' | '));
      await service(p, { serviceName: 'envsvc', servicePath: '/env' });
      const res = await send(p.httpPort, '/env/x');
      assert.equal(res.echo?.instance, 'envsvc.0');
      assert.equal(res.headers['x-extra'], 'yes');
      assert.equal(res.headers['x-extra2'], 'yes');
    });

    it('COMPRESSION_ALGO/COMPRESSION_TYPE compress a listed type for a client that accepts gzip', async () => {
      const zipped = await send(p.httpPort, '/env/x', { headers: { 'Accept-Encoding': 'gzip' } });
      assert.equal(zipped.headers['content-encoding'], 'gzip');
      assert.equal(zipped.echo?.path, '/env/x');
      assert.equal((await send(p.httpPort, '/env/x')).headers['content-encoding'], undefined);
    });

    it('CONNECTION_MODE=httpclose: a keep-alive client is told the connection closes', async () => {
      const res = await send(p.httpPort, '/env/x', { headers: { Connection: 'keep-alive' } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.connection, 'close');
    });

    it('TIMEOUT_SERVER=1: a slow answer is 504; a destination with timeoutServer=5 overrides it', async () => {
      assert.equal((await send(p.httpPort, '/env/slow')).status, 504);
      await service(p, { serviceName: 'patient', servicePath: '/patient', timeoutServer: '5' });
      const res = await send(p.httpPort, '/patient/slow');
      assert.equal(res.status, 200);
      assert.equal(res.echo?.path, '/patient/slow');
    });
  });

  describe('HTTPS_ONLY=true with SERVICE_DOMAIN_ALGO=hdr(host) (AC-21)', { concurrency: 1 }, () => {
    let p: TestProxy;

    before(async () => {
      p = await proxy('settings-https', { HTTPS_ONLY: 'true', SERVICE_DOMAIN_ALGO: 'hdr(host)' });
    });

    it('every destination redirects plain HTTP with 302; the Host must match the domain exactly', async () => {
      await service(p, { serviceName: 'secured', serviceDomain: 's.com', servicePath: '/s' });
      const res = await send(p.httpPort, '/s/x?y=1', { host: 's.com' });
      assert.equal(res.status, 302);
      assert.equal(res.headers.location, 'https://s.com/s/x?y=1');
      assert.equal((await send(p.httpPort, '/s/x', { host: 'S.com:80' })).status, 302);
      assert.equal((await send(p.httpPort, '/s/x', { host: 's.com.evil.net' })).status, 503, 'hdr(host) is exact');
      assert.equal((await send(p.httpPort, '/other', { host: 's.com' })).status, 503, 'only routed requests redirect');
    });
  });

  describe('a fleet of skipCheck services', { concurrency: 1 }, () => {
    it('the spares follow the services: a new skipCheck service goes live without a reload, a checked one needs one (spare-flavour regression)', async () => {
      const p = await proxy('settings-skipcheck');
      for (const name of ['sk1', 'sk2']) await service(p, { serviceName: name, servicePath: `/${name}`, skipCheck: 'true' });
      // A reload decides the spares: most services skip checks, so the spares' slots carry none.
      const config = await canonicalConfig(p);
      const spare = section(config, 'backend dfp-spare-1');
      assert.ok(spare.length > 1 && spare.filter((l) => l.startsWith('server ')).every((l) => !/ check\b/.test(l)), spare.join(' | '));
      await service(p, { serviceName: 'sk3', servicePath: '/sk3', skipCheck: 'true' });
      const added = (await applies(p)).filter((a) => a.trigger === 'reconfigure sk3').at(-1);
      assert.equal(added?.kind, 'runtime', JSON.stringify(added));
      assert.equal(await who(p.httpPort, '/sk3'), 'sk3.0');
      // One unlike the spares (checks on) cannot take one as it is.
      await service(p, { serviceName: 'checked', servicePath: '/checked' });
      const checked = (await applies(p)).filter((a) => a.trigger === 'reconfigure checked').at(-1);
      assert.equal(checked?.kind, 'reload', JSON.stringify(checked));
      assert.equal(await who(p.httpPort, '/checked'), 'checked.0');
    });
  });
});

describe('invalid environment settings stop start-up naming the variable (AC-21)', () => {
  const cases: [string, string][] = [
    ['TIMEOUT_CLIENT', 'abc'],
    ['DEFAULT_PORTS', '80:tls'],
    ['SERVICE_DOMAIN_ALGO', 'bogus'],
  ];

  it('loadSettings throws a SettingsError for the variable', () => {
    for (const [name, value] of cases) {
      assert.throws(
        () => loadSettings({ STATE_DIR: '/tmp/dfp-test-never-created', SECRETS_DIR: '/nonexistent', [name]: value }),
        (err: unknown) => err instanceof SettingsError && err.parameter === name && err.message.includes(name),
        `${name}=${value}`,
      );
    }
  });

  it('the proxy process exits 1 with a message naming the variable', () => {
    for (const [name, value] of cases) {
      const out = spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'dist/src/main.js')], {
        env: { PATH: process.env.PATH ?? '', STATE_DIR: '/tmp/dfp-test-never-created', SECRETS_DIR: '/nonexistent', CONSUL_ADDRESS: 'http://127.0.0.1:1', [name]: value },
        encoding: 'utf8',
        timeout: 10_000,
      });
      assert.equal(out.status, 1, `${name}=${value}: ${out.stdout}${out.stderr}`);
      assert.match(`${out.stdout}${out.stderr}`, new RegExp(`cannot start: ${name}: `), `${name}=${value}`);
    }
  });
});
