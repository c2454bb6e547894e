import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { waitForCertOnReplicas } from '../../src/certs/replicas.js';
import type { ReplicaReport } from '../../src/consul/replicas.js';
import { ReplicasLaggingError, ReplicasUnknownError } from '../../src/errors.js';

/** `cert?...&distribute=true`: per-replica results from the replicas' reports (certsIndex, certsRefused). */
describe('waitForCertOnReplicas', () => {
  const report = (id: string, extra: Partial<ReplicaReport> = {}): ReplicaReport => ({
    id,
    api: `http://127.0.0.1:1/${id}`,
    generation: 1,
    configHash: 'x',
    specsHash: 'x',
    kvIndex: 1,
    ready: true,
    at: '',
    ...extra,
  });
  const wait = { name: 'a.com', index: 10, action: 'put' as const, timeoutMs: 300 };

  it('answers as soon as every replica has reached the change: each one Live', async () => {
    let calls = 0;
    const list = async () => {
      calls++;
      return [report('r1', { certsIndex: 10 }), report('r2', { certsIndex: calls > 2 ? 12 : 9 })];
    };
    const results = await waitForCertOnReplicas(list, 'p/', wait);
    assert.deepEqual(results, [
      { ReplicaId: 'r1', Api: 'http://127.0.0.1:1/r1', Live: true },
      { ReplicaId: 'r2', Api: 'http://127.0.0.1:1/r2', Live: true },
    ]);
    assert.equal(calls, 3);
  });

  it('a replica that refused the certificate fails at once, without waiting for the deadline', async () => {
    const started = Date.now();
    const list = async () => [report('r1', { certsIndex: 10 }), report('r2', { certsIndex: 11, certsRefused: ['a.com'] })];
    await assert.rejects(waitForCertOnReplicas(list, 'p/', { ...wait, timeoutMs: 5000 }), (err: Error) => {
      assert.ok(err instanceof ReplicasLaggingError);
      assert.deepEqual(err.laggards, ['r2']);
      assert.deepEqual(
        (err.results as Record<string, unknown>[]).map((r) => [r.ReplicaId, r.Live, r.Reason]),
        [
          ['r1', true, undefined],
          ['r2', false, 'HAProxy on this replica refused the certificate (its log says why)'],
        ],
      );
      return true;
    });
    assert.ok(Date.now() - started < 1000);
  });

  it('a DELETE counts as done once the index is reached (refusals concern PUTs)', async () => {
    const list = async () => [report('r1', { certsIndex: 10, certsRefused: ['a.com'] })];
    assert.deepEqual(await waitForCertOnReplicas(list, 'p/', { ...wait, action: 'delete' }), [{ ReplicaId: 'r1', Api: 'http://127.0.0.1:1/r1', Removed: true }]);
  });

  it('at the deadline: 504 naming the replicas behind or not reporting certificates', async () => {
    const list = async () => [report('r1', { certsIndex: 10 }), report('r2', { certsIndex: 3 }), report('old')];
    await assert.rejects(waitForCertOnReplicas(list, 'p/', wait), (err: Error) => {
      assert.ok(err instanceof ReplicasLaggingError);
      assert.equal(err.code, 'DFP_ERR_REPLICAS_LAGGING');
      assert.deepEqual(err.laggards, ['r2', 'old']);
      const reasons = (err.results as { Reason?: string }[]).map((r) => r.Reason ?? '');
      assert.match(reasons[1] ?? '', /not confirmed within 300 ms: its certificates are live up to KV index 3, the change is at 10/);
      assert.match(reasons[2] ?? '', /does not report its certificates/);
      return true;
    });
  });

  it('no report at all, or a list Consul refuses: unknown (502), not "done"', async () => {
    await assert.rejects(waitForCertOnReplicas(async () => [], 'p/', wait), (err: Error) => err instanceof ReplicasUnknownError && /p\//.test(err.message));
    await assert.rejects(
      waitForCertOnReplicas(
        async () => {
          throw new ReplicasUnknownError('Consul answered 403');
        },
        'p/',
        wait,
      ),
      (err: Error) => err instanceof ReplicasUnknownError && /^stored and live here, but whether every live replica followed is unknown/.test(err.message) && err.reason === 'Consul answered 403',
    );
  });
});
