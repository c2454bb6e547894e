import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fdHardLimit } from '../../src/haproxy/fd-budget.js';
import { callApi, haproxyGeneration, liveConfig, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, through } from '../helpers/harness.js';

/**
 * HAProxy reserves a file descriptor per health-checked server slot and two per connection of
 * MAXCONN; past the process's hard limit a new worker does not start, which `haproxy -c` does not
 * catch. The proxy must refuse such a change itself, name the limit, and keep serving.
 */
describe('file descriptors: a change that would need more than ulimit -Hn is refused before it goes live', () => {
  const limit = fdHardLimit();
  it('a service scaled to 40 instances (64 slots) crosses the limit: 500 naming it, the old config keeps serving', { skip: limit === undefined || limit > 1_000_000 ? 'no finite open-files limit here' : false }, async () => {
    // Just enough MAXCONN that the 16 spare backends' 64 slots fit, and 64 more slots do not.
    const maxconn = Math.floor(((limit ?? 0) - 64 - 64 - 32) / 2);
    const consul = await startConsul();
    const p = await startProxy(consul.address, { MAXCONN: String(maxconn) });
    const backend = await startBackend('fd.0');
    try {
      await registerLikeRegistrator(consul.address, { name: 'fd', container: 'fd.0', exposedPort: 80, hostPort: backend.port });
      assert.equal((await callApi(p, 'reconfigure', { serviceName: 'fd', servicePath: '/fd' })).status, 200);
      assert.equal((await through(p, '/fd')).instance, 'fd.0');
      for (let i = 1; i < 40; i++) await registerLikeRegistrator(consul.address, { name: 'wide', container: `wide.${i}`, exposedPort: 80, hostPort: backend.port });
      const config = await liveConfig(p);
      const gen = await haproxyGeneration(p);
      const res = await callApi(p, 'reconfigure', { serviceName: 'wide', servicePath: '/wide' });
      assert.equal(res.status, 500, JSON.stringify(res.body));
      assert.match(String(res.body.Message), /would need about \d+ file descriptors .* at most \d+ \(ulimit -n\)/);
      assert.match(String(res.body.Message), /MAXCONN/);
      assert.equal(await liveConfig(p), config, 'nothing changed');
      assert.equal(await haproxyGeneration(p), gen, 'no reload');
      assert.equal((await through(p, '/fd')).instance, 'fd.0', 'still serving');
    } finally {
      await p.stop();
      await backend.close();
      await stopConsul(consul);
    }
  });
});
