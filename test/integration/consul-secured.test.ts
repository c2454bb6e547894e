import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkConsulAccess } from '../../src/consul/access-check.js';
import { ConsulAgent } from '../../src/consul/agent.js';
import { ConsulClient } from '../../src/consul/client.js';
import { createLogger } from '../../src/util/log.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { type Backend, CONSUL_BIN, eventually, registerLikeRegistrator, startBackend, stopConsul, tempDir, through, track } from '../helpers/harness.js';
import { type Ca, makeCa, makeCert, signCert, startTlsProxy, type TlsProxy } from '../helpers/tls.js';

/**
 * A secured Consul: ACLs enforced with default deny (the proxy's token from CONSUL_HTTP_TOKEN,
 * the least-privilege policy taken from docs/consul-acl.md as written), and an https listener
 * with verify_incoming (CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY). Real Consul 1.8.7 agents.
 */

/** The policy block of docs/consul-acl.md for `instance`: the test uses what the operator reads. */
function documentedPolicy(instance: string): string {
  const doc = readFileSync(path.join(PROJECT_ROOT, 'docs/consul-acl.md'), 'utf8');
  const block = /## The proxy's policy[\s\S]*?```hcl\n([\s\S]*?)```/.exec(doc)?.[1];
  assert.ok(block, 'docs/consul-acl.md has the policy block');
  return block.replaceAll('"docker-flow/"', `"${instance}/"`);
}

/** The policy's top-level rules (`key_prefix "x/" {...}`), one string each. */
function rulesOf(policy: string): string[] {
  return policy.match(/^[a-z_]+ "[^"]*" \{[^}]*\}/gm) ?? [];
}

/**
 * A TLS proxy that must become ready within 20 s: one that cannot talk to Consul fails the test
 * instead of hanging it.
 */
async function readyProxy(address: string, env: Record<string, string>, started: TlsProxy[]): Promise<TlsProxy> {
  const p = await startTlsProxy(address, { ...env, NO_WAIT_READY: '1' });
  started.push(p);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not ready within 20 s: ${plainLines(p.logs).filter((l) => /WARN|ERROR/.test(l)).slice(-3).join(' ')}`)), 20_000);
  });
  try {
    await Promise.race([p.proxy.whenReady(), late]);
  } finally {
    clearTimeout(timer);
  }
  return p;
}

/** Log lines (pino JSON) as `LEVEL message`, so the assertions read like the log does. */
function plainLines(lines: readonly string[]): string[] {
  return lines
    .join('')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        const o = JSON.parse(l) as { level?: string; msg?: string };
        return `${String(o.level ?? '').toUpperCase()} ${o.msg ?? ''}`;
      } catch {
        return l;
      }
    });
}
const plain = (lines: readonly string[]) => plainLines(lines).join('\n');

function collector(): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, log: createLogger('debug', 'check', (l) => lines.push(l)) };
}

describe('a Consul with ACLs enforced (default deny) and the documented least-privilege policy', () => {
  const INSTANCE = 'acl-walk';
  const master = randomUUID();
  let consul: ConsulAgent;
  let dir: string;
  let token: string;
  let tokenAccessor: string;
  /** Registrator's token: what docs/consul-acl.md says it needs. */
  let registrator: string;
  const backends: Backend[] = [];
  const proxies: TlsProxy[] = [];
  /** Every API answer seen, for the leak check. */
  const answers: string[] = [];

  const asMaster = (p: string, method = 'GET', body?: unknown) =>
    fetch(`${consul.address}${p}`, { method, headers: { 'X-Consul-Token': master }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });

  /** A token holding a new policy with `rules`; its secret ID and accessor. */
  async function tokenWith(rules: string): Promise<{ secret: string; accessor: string }> {
    const name = `p-${randomUUID().slice(0, 8)}`;
    const policy = await asMaster('/v1/acl/policy', 'PUT', { Name: name, Rules: rules });
    assert.equal(policy.status, 200, await policy.text());
    const res = await asMaster('/v1/acl/token', 'PUT', { Description: 'dfp test', Policies: [{ Name: name }] });
    assert.equal(res.status, 200);
    const t = (await res.json()) as { SecretID: string; AccessorID: string };
    return { secret: t.SecretID, accessor: t.AccessorID };
  }

  async function api(p: TlsProxy, endpoint: string, params: Record<string, string> = {}, init: RequestInit = {}): Promise<{ status: number; body: Record<string, unknown>; text: string }> {
    const res = await fetch(`${p.api}/${endpoint}?${new URLSearchParams(params)}`, init);
    const text = await res.text();
    answers.push(text);
    let body: Record<string, unknown> = {};
    try {
      body = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // config is text
    }
    return { status: res.status, body, text };
  }

  async function proxy(env: Record<string, string>): Promise<TlsProxy> {
    const p = await startTlsProxy(consul.address, { REPLICA_WAIT_TIMEOUT: '5', ...env });
    proxies.push(p);
    return p;
  }

  before(async () => {
    dir = tempDir();
    consul = await ConsulAgent.start({
      bin: CONSUL_BIN,
      mode: 'dev',
      dataDir: path.join(dir, 'consul'),
      httpMaxConnsPerClient: 4096,
      hcl: [`acl { enabled = true, default_policy = "deny", enable_key_list_policy = true, tokens { master = "${master}" } }`],
    });
    track(consul.pid);
    // The ACL system comes up a moment after the leader.
    await eventually('the ACL system', () => asMaster('/v1/acl/policies').then((r) => r.status), (s) => s === 200);
    ({ secret: token, accessor: tokenAccessor } = await tokenWith(documentedPolicy(INSTANCE)));
    registrator = (await tokenWith('service_prefix "" { policy = "write" }')).secret;
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    for (const b of backends) await b.close();
    if (consul) await stopConsul(consul);
    rmSync(dir, { recursive: true, force: true });
  });

  describe('with the least-privilege token (from the dfp_consul_http_token secret)', () => {
    let p: TlsProxy;

    before(async () => {
      const secrets = path.join(dir, 'secrets');
      mkdirSync(secrets, { recursive: true });
      writeFileSync(path.join(secrets, 'dfp_consul_http_token'), `${token}\n`);
      p = await readyProxy(consul.address, { REPLICA_WAIT_TIMEOUT: '5', PROXY_INSTANCE_NAME: INSTANCE, REPLICA_ID: 'acl-a', SECRETS_DIR: secrets, CONSUL_HTTP_TOKEN: 'overridden-by-the-secret-file' }, proxies);
    });

    it('the walkthrough works: register, reconfigure, request through HAProxy, scale, wait=all, a certificate, remove', async () => {
      const one = await startBackend('books-ms.0');
      backends.push(one);
      // Registrator has a token of its own.
      await registerLikeRegistrator(consul.address, { name: 'books-ms', container: 'books-ms.0', exposedPort: 8080, hostPort: one.port }, registrator);
      const res = await api(p, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
      assert.equal(res.status, 200, res.text);
      assert.equal((await through(p, '/api/v1/books')).instance, 'books-ms.0');
      // Live discovery (node and service reads) puts a second instance in rotation without a call.
      const two = await startBackend('books-ms.1');
      backends.push(two);
      await registerLikeRegistrator(consul.address, { name: 'books-ms', container: 'books-ms.1', exposedPort: 8080, hostPort: two.port }, registrator);
      await eventually(
        'both instances',
        async () => {
          const seen = new Set<string | undefined>();
          for (let i = 0; i < 8; i++) seen.add((await through(p, '/api/v1/books')).instance);
          return [...seen].sort();
        },
        (s) => s.length === 2,
      );
      // wait=all needs the replica report: a session and a KV write under the prefix.
      const all = await api(p, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books,/api/v2/books', wait: 'all' });
      assert.equal(all.status, 200, all.text);
      const status = await api(p, 'status');
      const fleet = status.body.Fleet as { InAgreement: unknown; Replicas: { id: string }[] };
      assert.equal(fleet.InAgreement, true, JSON.stringify(fleet));
      assert.deepEqual(
        fleet.Replicas.map((r) => r.id),
        ['acl-a'],
      );
      const pem = makeCert(dir, 'books.example.com');
      const cert = await api(p, 'cert', { certName: 'books.example.com', wait: 'all' }, { method: 'PUT', body: pem.bundle });
      assert.equal(cert.status, 200, cert.text);
      const removed = await api(p, 'remove', { serviceName: 'books-ms' });
      assert.equal(removed.status, 200, removed.text);
      assert.equal((await through(p, '/api/v1/books')).status, 503);
    });

    it("start-up says ACLs are on, with the token's accessor and nothing missing; the token is in no log line or answer", async () => {
      const logs = plain(p.logs);
      assert.match(logs, new RegExp(`Consul enforces ACLs: the proxy uses token ${tokenAccessor}`));
      assert.match(logs, /may do everything the proxy needs/);
      assert.doesNotMatch(logs, /Permission denied|ACL not found/);
      answers.push((await api(p, 'config')).text, (await api(p, 'config', { type: 'json' })).text, (await api(p, 'status')).text);
      assert.ok(!logs.includes(token) && !p.logs.join('').includes(token), 'the token is in the log');
      for (const a of answers) assert.ok(!a.includes(token), `the token is in an answer: ${a.slice(0, 200)}`);
    });
  });

  it('the policy is least privilege: each rule left out is named by the start-up check, and nothing outside the prefix is allowed', async () => {
    const policy = documentedPolicy(INSTANCE);
    const rules = rulesOf(policy);
    assert.equal(rules.length, 4, policy);
    const check = async (secret: string) => {
      const c = collector();
      const client = new ConsulClient([consul.address], 5000, undefined, { token: secret });
      try {
        return { report: await checkConsulAccess(client, INSTANCE, true, c.log, AbortSignal.timeout(20_000)), lines: c.lines };
      } finally {
        await client.close();
      }
    };
    const full = await check(token);
    assert.deepEqual(full.report, { acl: true, problems: [] });
    for (const rule of rules) {
      const reduced = await tokenWith(rules.filter((r) => r !== rule).join('\n'));
      const { report, lines } = await check(reduced.secret);
      const head = rule.slice(0, rule.indexOf('{')).trim();
      assert.ok(
        report.problems.some((p) => p.includes(head)),
        `without ${head}: ${JSON.stringify(report.problems)}`,
      );
      assert.ok(plainLines(lines).some((l) => l.includes('ERROR') && l.includes(head)));
      assert.ok(!lines.join('').includes(reduced.secret), 'the token is in the log');
    }
    // What the token may not do: KV outside its prefix, registering, reading ACLs.
    const as = (p: string, method = 'GET', body?: string) => fetch(`${consul.address}${p}`, { method, headers: { 'X-Consul-Token': token }, ...(body === undefined ? {} : { body }) });
    assert.equal((await as('/v1/kv/other-fleet/x', 'PUT', 'x')).status, 403);
    assert.equal((await as(`/v1/kv/${INSTANCE}-other/x`, 'PUT', 'x')).status, 403);
    assert.equal((await as('/v1/agent/service/register', 'PUT', JSON.stringify({ Name: 'evil', Port: 1 }))).status, 403);
    assert.equal((await as('/v1/acl/policies')).status, 403);
    assert.equal((await as('/v1/agent/self')).status, 403);
  });

  it("without a token: start-up names Consul's 403 and the anonymous token; reconfigure answers 503 naming the ACL refusal", async () => {
    const p = await proxy({ PROXY_INSTANCE_NAME: 'acl-none', NO_WAIT_READY: '1' });
    await eventually('the access check', () => p.proxy.accessCheck, (r) => r.problems.length > 0, 20_000);
    const logs = plain(p.logs);
    assert.match(logs, /ERROR .*Consul answered 403 \(Permission denied: Consul's ACL refused it; CONSUL_HTTP_TOKEN is missing.*\) to a KV write under acl-none\/ by Consul's anonymous token \(CONSUL_HTTP_TOKEN is not set\)/);
    assert.match(logs, /ERROR .*Consul lists no node to Consul's anonymous token/);
    // With enable_key_list_policy, reading the shared state is refused too: the restore cannot finish.
    await eventually('a failed restore', async () => plain(p.logs), (l) => /WARN .*restoring the|WARN .*restoring certificates/.test(l));
    const res = await api(p, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 503, res.text);
    assert.equal(res.body.Code, 'DFP_ERR_NOT_READY');
    assert.match(String(res.body.Message), /Consul answered 403 \(Permission denied: Consul's ACL refused it; CONSUL_HTTP_TOKEN is missing or its policy lacks this permission\) reading acl-none\/_dfp\//);
  });

  it("with a wrong token: start-up names Consul's 403 ACL not found; reconfigure answers 503 naming the 403", async () => {
    const wrong = randomUUID();
    const p = await proxy({ PROXY_INSTANCE_NAME: 'acl-wrong', CONSUL_HTTP_TOKEN: wrong, NO_WAIT_READY: '1' });
    await eventually('the access check', () => p.proxy.accessCheck, (r) => r.problems.length > 0, 20_000);
    const logs = plain(p.logs);
    assert.match(logs, /ERROR .*Consul answered 403 \(ACL not found: Consul does not know the token; check CONSUL_HTTP_TOKEN\) for CONSUL_HTTP_TOKEN/);
    const res = await api(p, 'reconfigure', { serviceName: 'books-ms', servicePath: '/api/v1/books' });
    assert.equal(res.status, 503, res.text);
    assert.equal(res.body.Code, 'DFP_ERR_CONSUL_UNAVAILABLE');
    assert.match(String(res.body.Message), /Consul answered 403 \(ACL not found: Consul does not know the token; check CONSUL_HTTP_TOKEN\)/);
    assert.ok(!plain(p.logs).includes(wrong) && !p.logs.join('').includes(wrong) && !res.text.includes(wrong), 'the token leaked');
  });
});

/**
 * Consul's default (no enable_key_list_policy): a prefix the token may not read looks empty, so a
 * proxy without a token does become ready; its first write is refused inside a transaction, which
 * Consul answers with 409, not 403.
 */
describe('a Consul with ACLs (default deny, default key listing) and no token', () => {
  let consul: ConsulAgent;
  let p: TlsProxy;

  before(async () => {
    consul = await ConsulAgent.start({ bin: CONSUL_BIN, mode: 'dev', dataDir: tempDir(), hcl: [`acl { enabled = true, default_policy = "deny", tokens { master = "${randomUUID()}" } }`] });
    track(consul.pid);
    p = await readyProxy(consul.address, { PROXY_INSTANCE_NAME: 'acl-hidden' }, []);
  });

  after(async () => {
    await p?.stop();
    if (consul) await stopConsul(consul);
  });

  it("start-up names the 403; reconfigure answers 503 naming Consul's ACL refusal of the write", async () => {
    assert.ok((await p.proxy.accessCheck).problems.some((l) => /^Consul answered 403 \(Permission denied.*KV write under acl-hidden\//.test(l)));
    const res = await fetch(`${p.api}/reconfigure?serviceName=books-ms&servicePath=/api/v1/books`);
    const body = (await res.json()) as Record<string, unknown>;
    assert.equal(res.status, 503);
    assert.equal(body.Code, 'DFP_ERR_CONSUL_UNAVAILABLE');
    assert.match(String(body.Message), /^storing books-ms: Consul refused the write of books-ms: 409 \(Permission denied: Consul's ACL refused it; CONSUL_HTTP_TOKEN is missing or its policy lacks this permission\); nothing was changed$/);
  });
});

describe('a Consul reached over https with verify_incoming', () => {
  let consul: ConsulAgent;
  let dir: string;
  let ca: Ca;
  let client: { certFile: string; keyFile: string; key: string };
  let backend: Backend;
  const proxies: TlsProxy[] = [];

  async function proxy(env: Record<string, string>): Promise<TlsProxy> {
    const address = consul.httpsAddress;
    assert.ok(address);
    const p = await startTlsProxy(address, env);
    proxies.push(p);
    return p;
  }

  async function reconfigure(p: TlsProxy): Promise<{ status: number; body: Record<string, unknown>; text: string }> {
    const res = await fetch(`${p.api}/reconfigure?serviceName=tls-svc&servicePath=/tls-svc`);
    const text = await res.text();
    return { status: res.status, body: JSON.parse(text) as Record<string, unknown>, text };
  }

  before(async () => {
    dir = tempDir();
    ca = makeCa(dir, 'consul-test-ca');
    const server = signCert(dir, ca, 'server.dc1.consul', ['IP:127.0.0.1', 'DNS:localhost']);
    client = signCert(dir, ca, 'dfp-proxy', ['DNS:dfp-proxy']);
    consul = await ConsulAgent.start({
      bin: CONSUL_BIN,
      mode: 'dev',
      dataDir: path.join(dir, 'consul'),
      httpMaxConnsPerClient: 4096,
      tls: { caFile: ca.certFile, certFile: server.certFile, keyFile: server.keyFile, verifyIncoming: true },
    });
    track(consul.pid);
    backend = await startBackend('tls-svc.0');
    await registerLikeRegistrator(consul.address, { name: 'tls-svc', container: 'tls-svc.0', exposedPort: 8080, hostPort: backend.port });
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    await backend?.close();
    if (consul) await stopConsul(consul);
    rmSync(dir, { recursive: true, force: true });
  });

  it('reconfigure works over https with CONSUL_CACERT and a client certificate; HAProxy serves the route', async () => {
    const p = await readyProxy(consul.httpsAddress ?? '', { CONSUL_CACERT: ca.certFile, CONSUL_CLIENT_CERT: client.certFile, CONSUL_CLIENT_KEY: client.keyFile }, proxies);
    const res = await reconfigure(p);
    assert.equal(res.status, 200, res.text);
    assert.equal((await through(p, '/tls-svc')).instance, 'tls-svc.0');
    const logs = plain(p.logs);
    const keyLine = client.key.split('\n')[1] ?? '';
    assert.ok(keyLine.length > 20 && !logs.includes(keyLine) && !p.logs.join('').includes(keyLine), 'a key line is in the log');
  });

  it("without CONSUL_CACERT: reconfigure answers 503 naming the untrusted certificate and CONSUL_CACERT, and start-up logs it", async () => {
    const p = await proxy({ CONSUL_CLIENT_CERT: client.certFile, CONSUL_CLIENT_KEY: client.keyFile, NO_WAIT_READY: '1' });
    const res = await reconfigure(p);
    assert.equal(res.status, 503, res.text);
    assert.equal(res.body.Code, 'DFP_ERR_CONSUL_UNAVAILABLE');
    assert.match(String(res.body.Message), /TLS: UNABLE_TO_VERIFY_LEAF_SIGNATURE \(Consul's certificate is not signed by a CA the proxy trusts: set CONSUL_CACERT/);
    await eventually('a start-up warning', async () => plain(p.logs), (l) => /WARN .*set CONSUL_CACERT/.test(l), 15_000);
  });

  it('without a client certificate: 503 naming CONSUL_CLIENT_CERT (Consul closes the connection after the handshake)', async () => {
    const p = await proxy({ CONSUL_CACERT: ca.certFile, NO_WAIT_READY: '1' });
    const res = await reconfigure(p);
    assert.equal(res.status, 503, res.text);
    assert.match(String(res.body.Message), /TLS: ERR_SSL_\w+ \(Consul verifies incoming connections \(verify_incoming\) and needs a client certificate: set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY\)/);
  });

  it('with a client certificate of another CA: 503 saying Consul refused it', async () => {
    const other = makeCa(dir, 'other-ca');
    const stranger = signCert(dir, other, 'stranger', ['DNS:stranger']);
    const p = await proxy({ CONSUL_CACERT: ca.certFile, CONSUL_CLIENT_CERT: stranger.certFile, CONSUL_CLIENT_KEY: stranger.keyFile, NO_WAIT_READY: '1' });
    const res = await reconfigure(p);
    assert.equal(res.status, 503, res.text);
    assert.match(String(res.body.Message), /refused CONSUL_CLIENT_CERT: it must be signed by a CA in Consul's ca_file/);
  });
});
