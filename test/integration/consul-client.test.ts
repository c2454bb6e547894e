import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { ConsulClient } from '../../src/consul/client.js';
import { ConsulUnavailableError } from '../../src/errors.js';
import { startConsul, stopConsul } from '../helpers/harness.js';

/**
 * The client's timeout is how long Consul takes to answer, not how long a request waited in line
 * for one of its budget's connections. Regression: 200 concurrent reconfigures on two proxies
 * (fleet.test.ts) queued behind the two request connections past the 5 s timeout on a loaded CI
 * machine and answered 503 "Consul is unavailable (timed out)" while Consul was fine.
 *
 * A blocking query Consul holds for `wait` stands in for a slow answer: a real agent, no stub.
 */
describe('ConsulClient timeouts', () => {
  let consul: ConsulAgent;
  let index = 0;
  before(async () => {
    consul = await startConsul();
    await fetch(`${consul.address}/v1/kv/held`, { method: 'PUT', body: 'x' });
    index = Number((await fetch(`${consul.address}/v1/kv/held`)).headers.get('x-consul-index'));
  });
  after(async () => {
    await stopConsul(consul);
  });

  const held = (wait: string) => `/v1/kv/held?index=${index}&wait=${wait}`;

  it('time waiting in line for a connection does not count against the timeout', async () => {
    const client = new ConsulClient([consul.address], 2000, { watchConnections: 1, requestConnections: 1 });
    try {
      const started = Date.now();
      // Three answers of ~1 s each, one connection: the third is answered ~3 s after it was asked.
      const answers = await Promise.all([1, 2, 3].map(() => client.request(held('1s'), { budget: 'request' })));
      assert.deepEqual(
        answers.map((a) => a.status),
        [200, 200, 200],
      );
      assert.ok(Date.now() - started >= 2900, `the requests were answered one after another (${Date.now() - started} ms)`);
    } finally {
      await client.close();
    }
  });

  it('an answer slower than the timeout fails with a message that says so', async () => {
    const client = new ConsulClient([consul.address], 1000, { watchConnections: 1, requestConnections: 1 });
    try {
      const err = await client.request(held('3s'), { budget: 'request' }).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(err instanceof ConsulUnavailableError, String(err));
      assert.match(err.message, /no answer within 1000 ms/);
      // The connection it held was given up: the next request gets a fresh one and is answered.
      assert.equal((await client.request('/v1/kv/held', { budget: 'request' })).status, 200);
    } finally {
      await client.close();
    }
  });
});
