import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import type { CertManager } from '../../src/certs/manager.js';
import { ConsulCertStore } from '../../src/certs/store.js';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { RING_SLOTS } from '../../src/consul/change-log.js';
import { ConsulClient } from '../../src/consul/client.js';
import { ChangeLogWriter } from '../../src/consul/log-writer.js';
import type { Fleet } from '../../src/fleet.js';
import { createLogger } from '../../src/util/log.js';
import { callApi, eventually, startConsul, stopConsul, tempDir } from '../helpers/harness.js';
import { certCall, hello, makeCert, type Pem, startTlsProxy, type TlsProxy } from '../helpers/tls.js';

/**
 * The shared certificates follow the change log (consul/change-log.ts): a write or delete of a
 * certificate is logged in the writer's ring in the same transaction, and the fleet's one blocking
 * query on the log wakes the certificates' manager, which holds none of its own. All traffic to
 * 127.0.0.1.
 */
describe('certificates through the change log', () => {
  let consul: ConsulAgent;
  let client: ConsulClient;
  let certDir: string;
  let pA: TlsProxy;
  let pB: TlsProxy;
  let a: Pem;
  const proxies: TlsProxy[] = [];
  /** B's requests to Consul, by budget. */
  const seenByB: { path: string; budget: string }[] = [];

  const certsOf = (p: TlsProxy) => (p.proxy as unknown as { certs: CertManager }).certs;
  const fleetOf = (p: TlsProxy) => (p.proxy as unknown as { fleet: Fleet }).fleet;
  const names = async (p: TlsProxy) => ((await callApi(p, 'certs')).body.Certs as { ProxyServiceName: string }[]).map((x) => x.ProxyServiceName);

  before(async () => {
    certDir = tempDir();
    a = makeCert(certDir, 'a.com');
    consul = await startConsul();
    client = new ConsulClient([consul.address], 5000);
    // Long waits: no blocking read ends empty during a test, so every full read below has another cause.
    pA = await startTlsProxy(consul.address, { REPLICA_ID: 'log-a', CONSUL_WATCH_WAIT: '120' });
    proxies.push(pA);
    pB = await startTlsProxy(consul.address, { REPLICA_ID: 'log-b', CONSUL_WATCH_WAIT: '120' });
    proxies.push(pB);
    pB.proxy.consul.onRequest = (path, budget) => seenByB.push({ path, budget });
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    await client?.close();
    if (consul) await stopConsul(consul);
    rmSync(certDir, { recursive: true, force: true });
  });

  it('a certificate put on one replica goes live on the other, which reads only that one and holds one blocking query fewer', async () => {
    const before = { ...certsOf(pB).reads };
    const res = await certCall(pA, 'PUT', 'a.com', a.bundle, { distribute: 'true' });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(
      (res.body.Replicas as { ReplicaId: string; Live: boolean }[]).map((r) => [r.ReplicaId, r.Live]).sort(),
      [
        ['log-a', true],
        ['log-b', true],
      ],
    );
    assert.equal((await hello(pB.tlsPort, 'a.com')).fingerprint256, a.fingerprint256);
    const reads = certsOf(pB).reads;
    assert.equal(reads.full, before.full, `no full read of the certificates: ${JSON.stringify(reads)}`);
    assert.equal(reads.certsFetched - before.certsFetched, 1, `only a.com read: ${JSON.stringify(reads)}`);
    assert.ok(
      seenByB.some((r) => r.budget === 'request' && r.path === '/v1/kv/docker-flow/_dfp/certs/a.com'),
      'B read a.com by name',
    );
    // No blocking query on the certificates' prefix; one on the change log.
    const blocking = seenByB.filter((r) => r.budget === 'watch').map((r) => r.path);
    assert.ok(!blocking.some((p) => p.includes('/_dfp/certs/')), blocking.join('\n'));
    assert.ok(blocking.some((p) => p.startsWith('/v1/kv/docker-flow/_dfp/changes/?recurse')), blocking.join('\n'));
    // What B holds in flight: discovery's blocking queries and the change log's, nothing else
    // (before the certificates followed the log: discovery's + 2).
    await eventually(
      'B holds discovery’s blocking queries + 1',
      async () => {
        const watches = (await callApi(pB, 'status')).body.Watches as { blockingQueries: number };
        return { discovery: watches.blockingQueries, held: pB.proxy.consul.stats().inFlight.watch };
      },
      (n) => n.held === n.discovery + 1,
    );
  });

  it('a delete goes out of the other replica too, read by name', async () => {
    const before = { ...certsOf(pB).reads };
    const res = await certCall(pA, 'DELETE', 'a.com', '', { wait: 'all' });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(await names(pB), []);
    assert.equal(certsOf(pB).reads.full, before.full);
    assert.equal(certsOf(pB).reads.certsFetched - before.certsFetched, 1);
  });

  it('a burst of more certificate changes than a ring holds makes the other replica read the whole prefix, and it converges', async () => {
    const burst = RING_SLOTS + 10;
    const writer = new ChangeLogWriter(client, 'docker-flow');
    writer.setWriter('burst-writer');
    const store = new ConsulCertStore(client, 'docker-flow', createLogger('error'), writer);
    const before = { ...certsOf(pB).reads };
    // B's follower of the log reads it once more at most, then waits (as for a write of its own in
    // flight), so the whole burst lands between two of its reads: its ring wraps past what B holds.
    const resume = fleetOf(pB).beginOwnWrite();
    try {
      for (let i = 0; i < burst; i++) await store.put(`burst-${i}.example`, a.bundle);
      await new Promise((r) => setTimeout(r, 200));
      assert.ok((await names(pB)).length < burst, 'B has not followed the burst yet');
    } finally {
      resume(undefined);
    }
    await eventually('B serves every certificate of the burst', () => names(pB), (n) => n.length === burst, 30_000);
    const reads = certsOf(pB).reads;
    assert.ok(reads.full > before.full, `a full read: ${JSON.stringify(reads)}`);
    assert.ok(reads.certsFetched - before.certsFetched < RING_SLOTS, `not read one by one: ${JSON.stringify(reads)}`);
    assert.match(pB.logs.join(''), /read every shared certificate: the change log of burst-writer wrapped past index \d+/);
  });
});
