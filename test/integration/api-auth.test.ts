import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { type Backend, registerLikeRegistrator, startBackend, startConsul, stopConsul, tempDir, through } from '../helpers/harness.js';
import { makeCert, type Pem, startTlsProxy, type TlsProxy } from '../helpers/tls.js';

/**
 * API authentication (API_USER/API_PASSWORD, API_TOKEN): every endpoint but ping, /v1/test and
 * /v2/test answers 401 without valid credentials and changes nothing; right ones work with basic
 * and with bearer; the dashboard and paths that do not exist yet are behind the same check; no
 * credential reaches an answer or the log. The credentials come from secret files that override
 * decoy variables, so the secret-file mechanism is what is tested.
 */

const USER = 'dfp-operator';
// Characters a URL must percent-encode: the Swarm Listener form `http://user:pass@proxy:8080` must still work.
const PASSWORD = 'pa:ss@w/rd%20-Zq7';
const TOKEN = 'tok3n.Zq7-xr9~Lk2+Ww/Jm4';
const DECOY = { API_USER: 'decoy-user', API_PASSWORD: 'decoy-password', API_TOKEN: 'decoy-token' };

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`;
const RIGHT = { basic: basic(USER, PASSWORD), bearer: `Bearer ${TOKEN}` };
const WRONG: Record<string, string> = {
  'wrong password': basic(USER, `${PASSWORD}x`),
  'wrong user': basic('someone', PASSWORD),
  'password cut short': basic(USER, PASSWORD.slice(0, -1)),
  'the env decoy (overridden by the secret file)': basic(DECOY.API_USER, DECOY.API_PASSWORD),
  'no colon': `Basic ${Buffer.from(`${USER}${PASSWORD}`).toString('base64')}`,
  'not base64': 'Basic !!!!',
  'wrong token': `Bearer ${TOKEN}x`,
  'the decoy token': `Bearer ${DECOY.API_TOKEN}`,
  'the password as a token': `Bearer ${PASSWORD}`,
  'the token as a password': basic(USER, TOKEN),
  'another scheme': `Digest username="${USER}"`,
  'a scheme alone': 'Bearer',
  // Hostile values: refused like any wrong credential, and never logged.
  'a very long token': `Bearer ${'A'.repeat(8000)}`,
  'a NUL after the password': basic(USER, `${PASSWORD}\u0000`),
  'a header injection in the password': basic(USER, `${PASSWORD}\r\nX-Evil: 1`),
  'a colon-only credential': basic('', ':'),
  'padding only': 'Basic ====',
  'the right secret twice': `Bearer ${TOKEN} ${TOKEN}`,
};

interface Answer {
  readonly status: number;
  readonly text: string;
  readonly headers: Headers;
}

describe('API authentication: API_USER/API_PASSWORD and API_TOKEN', () => {
  let consul: ConsulAgent;
  let backend: Backend;
  let p: TlsProxy;
  let pem: Pem;
  let dir: string;
  /** Every answer's status line, headers and body, for the leak check. */
  const seen: string[] = [];

  async function call(pathAndQuery: string, authorization: string | undefined, init: RequestInit = {}): Promise<Answer> {
    const base = p.api.replace(/\/v1\/docker-flow-proxy$/, '');
    const res = await fetch(`${base}${pathAndQuery}`, { ...init, headers: { ...(authorization === undefined ? {} : { Authorization: authorization }) } });
    const text = await res.text();
    seen.push(`${res.status} ${JSON.stringify([...res.headers])} ${text}`);
    return { status: res.status, text, headers: res.headers };
  }

  before(async () => {
    dir = tempDir();
    pem = makeCert(dir, 'auth.example.com');
    const secrets = path.join(dir, 'secrets');
    mkdirSync(secrets);
    // Trailing newlines, as `docker secret create` from a file often leaves them: trimmed.
    writeFileSync(path.join(secrets, 'dfp_api_user'), `${USER}\n`);
    writeFileSync(path.join(secrets, 'dfp_api_password'), `${PASSWORD}\n`);
    writeFileSync(path.join(secrets, 'dfp_api_token'), `${TOKEN}\n`);
    consul = await startConsul();
    backend = await startBackend('auth-svc.0');
    await registerLikeRegistrator(consul.address, { name: 'auth-svc', container: 'auth-svc.0', exposedPort: 8080, hostPort: backend.port });
    p = await startTlsProxy(consul.address, { ...DECOY, SECRETS_DIR: secrets });
  });

  after(async () => {
    await p?.stop();
    await backend?.close();
    if (consul) await stopConsul(consul);
    rmSync(dir, { recursive: true, force: true });
  });

  /**
   * Every endpoint of src/api/server.ts, and paths that are none (yet): how to call it, and what it
   * answers with valid credentials. `prepare` runs first with valid credentials (a DELETE needs a
   * stored certificate).
   */
  const B = '/v1/docker-flow-proxy';
  const endpoints: { name: string; path: string; init?: () => RequestInit; ok: number[]; prepare?: () => Promise<void> }[] = [
    { name: 'reconfigure', path: `${B}/reconfigure?serviceName=auth-svc&servicePath=/auth`, ok: [200] },
    { name: 'reconfigure dryRun', path: `${B}/reconfigure?serviceName=auth-svc&servicePath=/auth2&dryRun=true`, ok: [200] },
    { name: 'config', path: `${B}/config`, ok: [200] },
    { name: 'config?type=json', path: `${B}/config?type=json`, ok: [200] },
    { name: 'certs', path: `${B}/certs`, ok: [200] },
    { name: 'cert PUT', path: `${B}/cert?certName=auth.example.com`, init: () => ({ method: 'PUT', body: pem.bundle }), ok: [200] },
    {
      name: 'cert DELETE',
      path: `${B}/cert?certName=auth.example.com`,
      init: () => ({ method: 'DELETE' }),
      ok: [200],
      prepare: async () => assert.equal((await call(`${B}/cert?certName=auth.example.com`, RIGHT.basic, { method: 'PUT', body: pem.bundle })).status, 200),
    },
    { name: 'cert GET (405)', path: `${B}/cert?certName=auth.example.com`, ok: [405] },
    { name: 'status', path: `${B}/status`, ok: [200] },
    { name: 'successfulinitreload', path: `${B}/successfulinitreload`, ok: [200] },
    { name: 'reload', path: `${B}/reload`, ok: [200] },
    { name: 'reload?recreate=true', path: `${B}/reload?recreate=true`, ok: [200] },
    { name: 'reload?fromListener=true (400: no LISTENER_ADDRESS)', path: `${B}/reload?fromListener=true`, ok: [400] },
    { name: 'remove', path: `${B}/remove?serviceName=auth-svc`, ok: [200] },
    { name: 'reconfigure by form body (POST)', path: `${B}/reconfigure`, init: () => ({ method: 'POST', body: new URLSearchParams({ serviceName: 'auth-svc', servicePath: '/auth' }) }), ok: [200] },
    { name: 'metrics (HAProxy stats CSV, the original)', path: `${B}/metrics`, ok: [200] },
    { name: '/metrics (Prometheus)', path: '/metrics', ok: [200] },
    // The dashboard: the page, its data and its files.
    { name: 'the root (to the dashboard)', path: '/', init: () => ({ redirect: 'manual' }), ok: [302] },
    { name: 'the dashboard', path: '/ui/', ok: [200] },
    { name: 'the dashboard data', path: '/ui/data', ok: [200] },
    { name: "the dashboard's script", path: '/ui/dashboard.js', ok: [200] },
    { name: "the dashboard's chart library", path: '/ui/uplot.min.js', ok: [200] },
    { name: 'no such dashboard file', path: '/ui/nope.js', ok: [404] },
    // Not endpoints (yet). Behind the check all the same: 404 only once authenticated.
    { name: 'a path that is no endpoint', path: '/dashboard/', ok: [404] },
  ];

  it('ping, /v1/test and /v2/test answer without credentials (fixed answers, nothing to leak)', async () => {
    for (const open of [`${B}/ping`, '/v1/test', '/v2/test']) {
      const res = await call(open, undefined);
      assert.equal(res.status, 200, `${open}: ${res.text}`);
      assert.equal(JSON.parse(res.text).Status, 'OK');
    }
  });

  it('every endpoint answers 401 JSON with WWW-Authenticate without credentials, and with wrong ones', async () => {
    for (const e of endpoints) {
      for (const [what, authorization] of [['none', undefined] as const, ...Object.entries(WRONG)]) {
        const res = await call(e.path, authorization, e.init?.());
        assert.equal(res.status, 401, `${e.name} with ${what}: ${res.status} ${res.text}`);
        const body = JSON.parse(res.text) as Record<string, unknown>;
        assert.equal(body.Status, 'NOK');
        assert.equal(body.Code, 'DFP_ERR_UNAUTHORIZED');
        assert.match(res.headers.get('content-type') ?? '', /application\/json/);
        const challenge = res.headers.get('www-authenticate') ?? '';
        assert.match(challenge, /Basic realm="docker-flow-proxy"/, `${e.name}: ${challenge}`);
        assert.match(challenge, /Bearer realm="docker-flow-proxy"/, `${e.name}: ${challenge}`);
      }
    }
  });

  it('an open path is matched after the URL is resolved: a dot-segment walk from ping is not open', async () => {
    // Sent as is (fetch would resolve the dots itself before sending).
    const raw = (rawPath: string, authorization?: string) =>
      new Promise<number>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: p.proxy.apiPort, path: rawPath, headers: authorization ? { Authorization: authorization } : {} }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          })
          .on('error', reject);
      });
    assert.equal(await raw(`${B}/ping/../config`), 401);
    assert.equal(await raw(`${B}/ping/../config`, RIGHT.basic), 200);
    assert.equal(await raw(`${B}/ping%2F..%2Fconfig`), 401);
    assert.equal(await raw(`/v1/test/../docker-flow-proxy/status`), 401);
    assert.equal(await raw(`${B}/ping?x=../config`), 200);
  });

  it('refused requests changed nothing: no service, no certificate', async () => {
    const status = JSON.parse((await call(`${B}/status`, RIGHT.bearer)).text) as { Services: unknown[] };
    assert.deepEqual(status.Services, []);
    const certs = JSON.parse((await call(`${B}/certs`, RIGHT.bearer)).text) as { Certs: unknown[] };
    assert.deepEqual(certs.Certs, []);
    assert.equal((await through(p, '/auth')).status, 503);
  });

  for (const scheme of ['basic', 'bearer'] as const) {
    it(`every endpoint works with the right credentials (${scheme})`, async () => {
      for (const e of endpoints) {
        await e.prepare?.();
        const res = await call(e.path, RIGHT[scheme], e.init?.());
        assert.ok(e.ok.includes(res.status), `${e.name} (${scheme}): ${res.status} ${res.text}`);
      }
      // The last reconfigure (a form body) routed the service: the calls did what they say.
      assert.equal((await through(p, '/auth')).status, 200);
    });
  }

  it('credentials in the URL (the Swarm Listener: http://user:pass@proxy:8080/...) arrive as basic auth', async () => {
    const url = new URL(`${p.api}/reconfigure?serviceName=auth-svc&servicePath=/auth-listener`);
    url.username = encodeURIComponent(USER);
    url.password = encodeURIComponent(PASSWORD);
    assert.match(url.href, /^http:\/\/dfp-operator:pa%3Ass%40w%2Frd%2520-Zq7@127\.0\.0\.1:/);
    // Node's http client, like Go's, turns the URL's user info into `Authorization: Basic`.
    const status = await new Promise<number>((resolve, reject) => {
      http
        .get(url, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        })
        .on('error', reject);
    });
    assert.equal(status, 200);
    assert.equal((await through(p, '/auth-listener')).status, 200);
  });

  it('no credential appears in any answer or log line; refused attempts with credentials are logged', async () => {
    const secrets = [PASSWORD, TOKEN, RIGHT.basic.slice(6), encodeURIComponent(PASSWORD), ...Object.values(DECOY).slice(1)];
    const logs = p.logs.join('');
    for (const s of secrets) {
      assert.ok(!logs.includes(s), `a credential (${s.length} chars) is in the log`);
      for (const answer of seen) assert.ok(!answer.includes(s), `a credential (${s.length} chars) is in an answer: ${answer.slice(0, 200)}`);
    }
    assert.match(logs, /API request to \/v1\/docker-flow-proxy\/reconfigure from 127\.0\.0\.1 refused: its credentials are not valid/);
    assert.match(logs, /the API requires HTTP basic \(API_USER\/API_PASSWORD\) or a bearer token \(API_TOKEN\) on every endpoint but ping/);
  });
});

describe('API authentication with API_TOKEN alone', () => {
  let consul: ConsulAgent;
  let p: TlsProxy;

  before(async () => {
    consul = await startConsul();
    p = await startTlsProxy(consul.address, { API_TOKEN: TOKEN });
  });

  after(async () => {
    await p?.stop();
    if (consul) await stopConsul(consul);
  });

  it('accepts the bearer token, refuses basic auth of any kind, and offers only Bearer', async () => {
    const get = (authorization?: string) => fetch(`${p.api}/config`, { headers: authorization ? { Authorization: authorization } : {} });
    assert.equal((await get(`Bearer ${TOKEN}`)).status, 200);
    // The scheme name is case-insensitive (RFC 9110).
    assert.equal((await get(`bearer ${TOKEN}`)).status, 200);
    for (const wrong of [basic('x', TOKEN), basic(TOKEN, TOKEN), undefined]) {
      const res = await get(wrong);
      assert.equal(res.status, 401);
      assert.equal(res.headers.get('www-authenticate'), 'Bearer realm="docker-flow-proxy"');
    }
  });
});

describe('API authentication settings at start-up (the proxy process)', () => {
  const start = (env: Record<string, string>) =>
    spawnSync(process.execPath, [path.join(PROJECT_ROOT, 'dist/src/main.js')], {
      env: { PATH: process.env.PATH ?? '', CONSUL_ADDRESS: 'http://127.0.0.1:9', SECRETS_DIR: path.join(PROJECT_ROOT, 'no-such-dir'), ...env },
      encoding: 'utf8',
      timeout: 20_000,
    });

  it('API_USER without API_PASSWORD (or the reverse) stops start-up with an error naming the variable, echoing no value', () => {
    const user = start({ API_USER: 'ops' });
    assert.equal(user.status, 1, user.stderr);
    assert.match(user.stderr, /cannot start: API_PASSWORD: is empty while API_USER is set/);
    const password = start({ API_PASSWORD: 'Zq7-secret-value' });
    assert.equal(password.status, 1, password.stderr);
    assert.match(password.stderr, /cannot start: API_USER: is empty while API_PASSWORD is set/);
    assert.ok(!password.stderr.includes('Zq7-secret-value'));
    const token = start({ API_TOKEN: 'Zq7 secret with spaces' });
    assert.equal(token.status, 1, token.stderr);
    assert.match(token.stderr, /cannot start: API_TOKEN: must use only/);
    assert.ok(!token.stderr.includes('Zq7'));
  });
});
