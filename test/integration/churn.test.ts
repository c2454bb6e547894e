import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import {
  type Backend,
  callApi,
  deregister,
  registerLikeRegistrator,
  startBackend,
  startConsul,
  startProxy,
  stopConsul,
  type TestProxy,
} from '../helpers/harness.js';
import { runLoad } from '../helpers/load.js';

/**
 * No request fails while instances come and go and other services are reconfigured, through both
 * the runtime API and reloads. Bounded: two 5-second phases on loopback.
 */
describe('zero failed requests during churn', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  const backends: Backend[] = [];

  before(async () => {
    consul = await startConsul();
    proxy = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30' });
    for (let i = 0; i < 4; i++) backends.push(await startBackend(`web.${i}`));
    for (const i of [0, 1]) {
      await registerLikeRegistrator(consul.address, { name: 'web', container: `web.${i}`, exposedPort: 80, hostPort: backends[i]?.port ?? 0 });
    }
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'web', servicePath: '/web' })).status, 200);
  });

  after(async () => {
    await proxy?.stop();
    await Promise.all(backends.map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function churn(round: number, stop: () => boolean): Promise<{ scale: number; reconfigure: number }> {
    let scale = 0;
    let reconfigure = 0;
    for (let i = 0; !stop(); i++) {
      // Scale: instances 2 and 3 come and go (instances 0 and 1 always stay).
      const n = 2 + (i % 2);
      const id = `host1:web.${n}:80`;
      if (Math.floor(i / 2) % 2 === 0) {
        await registerLikeRegistrator(consul.address, { name: 'web', container: `web.${n}`, exposedPort: 80, hostPort: backends[n]?.port ?? 0 });
      } else await deregister(consul.address, id);
      scale++;
      // Reconfigure other services: runtime-class (prefix) and reload-class (regex) in turn.
      const params: Record<string, string> = i % 2 === 0 ? { serviceName: `other${round}-${i}`, servicePath: `/other${round}-${i}` } : { serviceName: `rx${round}-${i}`, servicePath: `^/rx${round}-${i}$`, pathType: 'path_reg' };
      const res = await callApi(proxy, 'reconfigure', params);
      assert.equal(res.status, 200, res.text);
      reconfigure++;
      await new Promise((r) => setTimeout(r, 40));
    }
    return { scale, reconfigure };
  }

  for (const keepAlive of [true, false]) {
    it(`${keepAlive ? 'keep-alive' : 'Connection: close'} clients see no error`, async () => {
      let done = false;
      const load = runLoad(`${proxy.http}/web`, { workers: 6, durationMs: 5000, keepAlive });
      const changes = churn(keepAlive ? 1 : 2, () => done);
      const result = await load;
      done = true;
      const counts = await changes;
      assert.deepEqual({ failed: result.failed, errors: result.errors }, { failed: 0, errors: [] }, `${result.ok} ok`);
      assert.ok(counts.scale >= 5 && counts.reconfigure >= 5, JSON.stringify(counts));
      // Two shared cores run the suite, HAProxy and the clients: the count is about meaning, not speed.
      assert.ok(result.ok > 500, `enough requests to mean something: ${result.ok}`);
      console.log(`churn (${keepAlive ? 'keep-alive' : 'close'}): ${result.ok} requests, 0 failed, ${JSON.stringify(counts)}`);
    });
  }
});
