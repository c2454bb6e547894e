import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import type { Fleet } from '../../src/fleet.js';
import { callApi, eventually, haproxyGeneration, startConsul, stopConsul, tempDir } from '../helpers/harness.js';
import { certCall, hello, keyLines, makeCert, type Pem, startTlsProxy, storedCertKeys, type TlsProxy } from '../helpers/tls.js';

/**
 * Certificates across a fleet of two replicas sharing a Consul: `distribute=true` answers with each
 * replica's result once the certificate is live there (or 504 naming who is not); `DELETE cert`
 * removes a certificate from Consul KV, from HAProxy at run time (or by a reload when it is the
 * default or the last one) and from the crt-list on every replica, and SNI for its name falls back
 * to the default certificate (PREFERRED_CERTIFICATE where set). All traffic to 127.0.0.1.
 */
describe('certificates across replicas: distribute results and DELETE', () => {
  let consul: ConsulAgent;
  let certDir: string;
  const proxies: TlsProxy[] = [];
  /** Every answer of the cert endpoint: checked for key material at the end. */
  const answers: string[] = [];
  const pems: Pem[] = [];
  let pA: TlsProxy;
  let pB: TlsProxy;
  let a: Pem;
  let b: Pem;
  let c: Pem;

  const cert = async (p: TlsProxy, method: string, name: string | undefined, body = '', query: Record<string, string> = {}) => {
    const res = await certCall(p, method, name, body, query);
    answers.push(res.text);
    return res;
  };
  const kvKeys = (instance = 'docker-flow') => storedCertKeys(consul.address, instance);
  const names = async (p: TlsProxy) => ((await callApi(p, 'certs')).body.Certs as { ProxyServiceName: string }[]).map((x) => x.ProxyServiceName);
  const crtList = (p: TlsProxy) => {
    const file = path.join(p.stateDir, 'crt-list.txt');
    return existsSync(file) ? readFileSync(file, 'utf8') : '';
  };
  const fleetOf = (p: TlsProxy) => (p.proxy as unknown as { fleet: Fleet }).fleet;
  const replicaId = (p: TlsProxy) => `fleet-${p === pA ? 'a' : 'b'}`;
  const sortById = (list: Record<string, unknown>[]) => [...list].sort((x, y) => String(x.ReplicaId).localeCompare(String(y.ReplicaId)));

  before(async () => {
    certDir = tempDir();
    a = makeCert(certDir, 'a.com');
    b = makeCert(certDir, 'b.com');
    c = makeCert(certDir, 'c.com');
    pems.push(a, b, c);
    consul = await startConsul();
    pA = await startTlsProxy(consul.address, { REPLICA_ID: 'fleet-a', REPLICA_WAIT_TIMEOUT: '3' });
    proxies.push(pA);
    // pB prefers c.com as its default certificate; pA has none preferred (the first by name).
    pB = await startTlsProxy(consul.address, { REPLICA_ID: 'fleet-b', PREFERRED_CERTIFICATE: 'c.*' });
    proxies.push(pB);
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    if (consul) await stopConsul(consul);
    rmSync(certDir, { recursive: true, force: true });
  });

  it('PUT cert with distribute=true answers once every replica serves it, with each replica named', async () => {
    for (const [name, pem] of [
      ['a.com', a],
      ['b.com', b],
      ['c.com', c],
    ] as const) {
      const res = await cert(pA, 'PUT', name, pem.bundle, { distribute: 'true' });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.Message, 'Distributed to all instances');
      assert.equal(res.body.Distribute, true);
      const replicas = sortById(res.body.Replicas as Record<string, unknown>[]);
      assert.deepEqual(
        replicas.map((r) => [r.ReplicaId, r.Live, r.Reason]),
        [
          ['fleet-a', true, undefined],
          ['fleet-b', true, undefined],
        ],
      );
      assert.match(String(replicas[1]?.Api), /^http:\/\/127\.0\.0\.1:\d+$/);
      // Live on the other replica when the answer came: no waiting here.
      assert.equal((await hello(pB.tlsPort, name)).fingerprint256, pem.fingerprint256, `${name} on the other replica`);
    }
    assert.equal((await hello(pA.tlsPort, 'unknown.example')).cn, 'a.com', 'default by name on pA');
    assert.equal((await hello(pB.tlsPort, 'unknown.example')).cn, 'c.com', 'PREFERRED_CERTIFICATE on pB');
    // Without distribute (nor wait=all) there are no per-replica results.
    const plain = await cert(pA, 'PUT', 'a.com', a.bundle);
    assert.equal(plain.status, 200, plain.text);
    assert.equal(plain.body.Replicas, undefined);
    assert.equal(plain.body.Message, '');
  });

  it('DELETE cert: gone from KV, from HAProxy without a reload and from the crt-list, on every replica', async () => {
    const genA = await haproxyGeneration(pA);
    const genB = await haproxyGeneration(pB);
    const dry = await cert(pA, 'DELETE', 'b.com', '', { dryRun: 'true' });
    assert.equal(dry.status, 200, dry.text);
    assert.equal(dry.body.ApplyKind, 'runtime');
    assert.deepEqual(await kvKeys(), ['docker-flow/_dfp/certs/a.com', 'docker-flow/_dfp/certs/b.com', 'docker-flow/_dfp/certs/c.com'], 'the dry run changed nothing');

    const res = await cert(pA, 'DELETE', 'b.com', '', { distribute: 'true' });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.body.CertName, 'b.com');
    assert.deepEqual(
      sortById(res.body.Replicas as Record<string, unknown>[]).map((r) => [r.ReplicaId, r.Removed]),
      [
        ['fleet-a', true],
        ['fleet-b', true],
      ],
    );
    assert.deepEqual(await kvKeys(), ['docker-flow/_dfp/certs/a.com', 'docker-flow/_dfp/certs/c.com']);
    for (const p of [pA, pB]) {
      assert.deepEqual(await names(p), ['a.com', 'c.com'], replicaId(p));
      assert.doesNotMatch(crtList(p), /b\.com/, `${replicaId(p)}: crt-list`);
      assert.equal(existsSync(path.join(p.stateDir, 'certs-live', 'b.com.pem')), false, `${replicaId(p)}: the file is gone`);
      assert.match(p.logs.join(''), /certificate b\.com removed through the runtime API \(no reload\)/, replicaId(p));
    }
    // SNI b.com now gets each replica's default: the first by name on pA, the preferred one on pB.
    assert.equal((await hello(pA.tlsPort, 'b.com')).cn, 'a.com');
    assert.equal((await hello(pB.tlsPort, 'b.com')).cn, 'c.com');
    assert.equal(await haproxyGeneration(pA), genA, 'pA did not reload');
    assert.equal(await haproxyGeneration(pB), genB, 'pB did not reload');

    const again = await cert(pB, 'DELETE', 'b.com');
    assert.equal(again.status, 404, again.text);
    assert.equal(again.body.Code, 'DFP_ERR_NOT_FOUND');
    assert.equal(again.body.Parameter, 'certName');
    assert.match(String(again.body.Message), /b\.com/);
  });

  it('a deleted certificate can be stored again, and goes live at run time where it lands last in the crt-list', async () => {
    // pB orders c.com (preferred), a.com, then b.com at the end: runtime. On pA it lands between a.com and c.com: a reload.
    const genB = await haproxyGeneration(pB);
    const res = await cert(pB, 'PUT', 'b.com', b.bundle, { wait: 'all' });
    assert.equal(res.status, 200, res.text);
    assert.equal((res.body.Replicas as unknown[]).length, 2);
    for (const p of [pA, pB]) assert.equal((await hello(p.tlsPort, 'b.com')).fingerprint256, b.fingerprint256, replicaId(p));
    assert.equal(await haproxyGeneration(pB), genB, 'pB did not reload');
  });

  it('deleting the default certificate reloads where it is the default, and not elsewhere', async () => {
    // a.com is pA's default (first by name) but not pB's (c.com is preferred there).
    const genA = await haproxyGeneration(pA);
    const genB = await haproxyGeneration(pB);
    const dry = await cert(pA, 'DELETE', 'a.com', '', { dryRun: 'true' });
    assert.equal(dry.body.ApplyKind, 'reload', dry.text);
    assert.equal((await cert(pB, 'DELETE', 'a.com', '', { dryRun: 'true' })).body.ApplyKind, 'runtime');
    const res = await cert(pA, 'DELETE', 'a.com', '', { distribute: 'true' });
    assert.equal(res.status, 200, res.text);
    assert.notEqual(await haproxyGeneration(pA), genA, 'pA reloaded');
    assert.equal(await haproxyGeneration(pB), genB, 'pB did not reload');
    assert.equal((await hello(pA.tlsPort, 'a.com')).cn, 'b.com', 'pA: the new first of the crt-list');
    assert.equal((await hello(pB.tlsPort, 'a.com')).cn, 'c.com', 'pB: the preferred certificate');
  });

  it('distribute=true names the replicas that cannot be confirmed within REPLICA_WAIT_TIMEOUT (504)', async () => {
    // A replica that stopped following certificates, and one of a version that does not report them.
    const session = JSON.parse(await (await fetch(`${consul.address}/v1/session/create`, { method: 'PUT', body: JSON.stringify({ TTL: '30s', Behavior: 'delete' }) })).text()) as { ID: string };
    const report = (id: string, extra: Record<string, unknown>) => ({ id, api: 'http://127.0.0.9:1', generation: 1, configHash: 'x', specsHash: 'x', kvIndex: 1, ready: true, at: new Date().toISOString(), ...extra });
    for (const [id, extra] of [
      ['stuck-replica', { certsIndex: 1, certsRefused: [] }],
      ['old-replica', {}],
    ] as const) {
      await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/replicas/${id}?acquire=${session.ID}`, { method: 'PUT', body: JSON.stringify(report(id, extra)) });
    }
    try {
      const d = makeCert(certDir, 'd.com');
      pems.push(d);
      const started = Date.now();
      const res = await cert(pA, 'PUT', 'd.com', d.bundle, { distribute: 'true' });
      assert.equal(res.status, 504, res.text);
      assert.equal(res.body.Code, 'DFP_ERR_REPLICAS_LAGGING');
      assert.deepEqual([...(res.body.Laggards as string[])].sort(), ['old-replica', 'stuck-replica']);
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= 2900 && elapsed < 8000, `waited REPLICA_WAIT_TIMEOUT (3 s) of pA: ${elapsed} ms`);
      const replicas = sortById(res.body.Replicas as Record<string, unknown>[]);
      assert.deepEqual(
        replicas.map((r) => [r.ReplicaId, r.Live]),
        [
          ['fleet-a', true],
          ['fleet-b', true],
          ['old-replica', false],
          ['stuck-replica', false],
        ],
      );
      assert.match(String(replicas[2]?.Reason), /does not report its certificates/);
      assert.match(String(replicas[3]?.Reason), /not confirmed within 3000 ms/);
      // Live all the same where it could be: 504 says who is not, it does not undo.
      assert.equal((await hello(pA.tlsPort, 'd.com')).cn, 'd.com');
      assert.equal((await hello(pB.tlsPort, 'd.com')).cn, 'd.com');
      // wait=local: no waiting, no per-replica results.
      const local = await cert(pA, 'DELETE', 'd.com', '', { distribute: 'true', wait: 'local' });
      assert.equal(local.status, 200, local.text);
      assert.equal(local.body.Replicas, undefined);
    } finally {
      await fetch(`${consul.address}/v1/session/destroy/${session.ID}`, { method: 'PUT' });
    }
  });

  it('a certificate deleted from Consul KV by hand (no change log entry) leaves every replica at its next full read', async () => {
    await fetch(`${consul.address}/v1/kv/docker-flow/_dfp/certs/b.com`, { method: 'DELETE' });
    await new Promise((r) => setTimeout(r, 500));
    for (const p of [pA, pB]) assert.ok((await names(p)).includes('b.com'), `${replicaId(p)}: the log does not name it`);
    // The full read is due at the next change of the log (a busy fleet's log never times out).
    for (const p of [pA, pB]) fleetOf(p).fullReadEveryMs = 0;
    try {
      assert.equal((await callApi(pA, 'reconfigure', { serviceName: 'trigger', servicePath: '/trigger' })).status, 200);
      for (const p of [pA, pB]) {
        await eventually(`b.com gone on ${replicaId(p)}`, () => names(p), (n) => !n.includes('b.com'));
        assert.doesNotMatch(crtList(p), /b\.com/);
      }
    } finally {
      for (const p of [pA, pB]) fleetOf(p).fullReadEveryMs = 5 * 60 * 1000;
    }
    assert.equal((await hello(pB.tlsPort, 'b.com')).cn, 'c.com');
  });

  it('deleting the last certificate takes the :ssl listeners away (a reload), and a dry run shows it', async () => {
    const dry = await cert(pA, 'DELETE', 'c.com', '', { dryRun: 'true' });
    assert.equal(dry.body.ApplyKind, 'reload', dry.text);
    assert.deepEqual(dry.body.ReloadBecause, ['the :ssl listeners go (no certificate left)']);
    assert.match(String(dry.body.Diff), new RegExp(`^-    bind \\*:${pA.tlsPort} ssl crt-list `, 'm'));
    const res = await cert(pA, 'DELETE', 'c.com', '', { distribute: 'true' });
    assert.equal(res.status, 200, res.text);
    for (const p of [pA, pB]) {
      assert.doesNotMatch((await callApi(p, 'config')).text, /ssl crt-list/, replicaId(p));
      assert.deepEqual(await names(p), []);
      assert.equal(existsSync(path.join(p.stateDir, 'crt-list.txt')), false);
      await assert.rejects(hello(p.tlsPort, 'c.com'), `${replicaId(p)} no longer listens for TLS`);
    }
    assert.deepEqual(await kvKeys(), []);
  });

  it('a certificate of CERTS_DIR cannot be deleted (400), and is served again when a stored one of its name is deleted', async () => {
    const dir = path.join(tempDir(), 'certs');
    mkdirSync(dir);
    const local = makeCert(certDir, 'e.com');
    const stored = makeCert(certDir, 'e.com', ['e.com', 'www.e.com']);
    const other = makeCert(certDir, 'f.com');
    pems.push(local, stored, other);
    writeFileSync(path.join(dir, 'e.com.pem'), local.bundle);
    writeFileSync(path.join(dir, 'f.com.pem'), other.bundle);
    const p = await startTlsProxy(consul.address, { PROXY_INSTANCE_NAME: 'local-fallback', CERTS_DIR: dir });
    proxies.push(p);
    try {
      const refused = await cert(p, 'DELETE', 'f.com');
      assert.equal(refused.status, 400, refused.text);
      assert.equal(refused.body.Parameter, 'certName');
      assert.match(String(refused.body.Message), /CERTS_DIR/);
      assert.equal((await cert(p, 'PUT', 'e.com', stored.bundle)).status, 200);
      assert.equal((await hello(p.tlsPort, 'e.com')).fingerprint256, stored.fingerprint256);
      const dry = await cert(p, 'DELETE', 'e.com', '', { dryRun: 'true' });
      assert.match(String(dry.body.Message), /the file of the same name from CERTS_DIR would be served again/);
      assert.deepEqual(dry.body.Commands, [
        `set ssl cert ${path.join(p.stateDir, 'certs-live', 'e.com.pem')} <<(certificate chain and private key, not shown)`,
        `commit ssl cert ${path.join(p.stateDir, 'certs-live', 'e.com.pem')}`,
      ]);
      const res = await cert(p, 'DELETE', 'e.com');
      assert.equal(res.status, 200, res.text);
      assert.equal((await hello(p.tlsPort, 'e.com')).fingerprint256, local.fingerprint256);
      assert.deepEqual(
        ((await callApi(p, 'certs')).body.Certs as Record<string, unknown>[]).map((x) => [x.ProxyServiceName, x.Source]),
        [
          ['e.com', 'dir'],
          ['f.com', 'dir'],
        ],
      );
      assert.deepEqual(await kvKeys('local-fallback'), []);
    } finally {
      rmSync(path.dirname(dir), { recursive: true, force: true });
    }
  });

  it('no key material in any answer of the cert endpoint, status or the log', async () => {
    const texts = [...answers, ...(await Promise.all(proxies.map(async (p) => (await callApi(p, 'status')).text))), ...proxies.map((p) => p.logs.join(''))];
    assert.ok(answers.length > 15, 'the answers were collected');
    for (const text of texts) {
      assert.doesNotMatch(text, /PRIVATE KEY|BEGIN CERTIFICATE/);
      for (const pem of pems) for (const line of keyLines(pem)) assert.ok(!text.includes(line), 'a key line leaked');
    }
  });
});
