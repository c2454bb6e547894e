import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConsulClient } from '../../src/consul/client.js';
import { ConsulSpecStore } from '../../src/consul/spec-store.js';
import { fdHardLimit } from '../../src/haproxy/fd-budget.js';
import { spec } from '../../src/spec/defaults.js';
import { createLogger } from '../../src/util/log.js';
import path from 'node:path';
import { MAP_FILES } from '../../src/render/routes.js';
import { callApi, eventually, haproxyGeneration, liveConfig, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/**
 * HAProxy reserves a file descriptor per health-checked server slot and two per connection of
 * MAXCONN; past the process's hard limit a new worker does not start, which `haproxy -c` does not
 * catch. The proxy must refuse such a change itself, name the limit, and keep serving.
 */
/** The prefix routes HAProxy serves now, from the runtime API. */
async function liveMap(p: TestProxy): Promise<string> {
  return p.proxy.haproxy.adminCommand(`show map ${path.join(p.stateDir, MAP_FILES.prefix)}`);
}

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

  // Regression: a start-up restore past the limit fell back to one apply per spec, each rendering
  // and checking everything: at 10,000 stored services that ran for hours before the API was ready.
  it('a restore of 60 stored services of which about 20 fit: the first ones are applied in a few checks', { skip: limit === undefined || limit > 1_000_000 ? 'no finite open-files limit here' : false }, async () => {
    // The 16 spare backends (64 slots) and at least 20 services of 4 slots each fit, not 60.
    const maxconn = Math.floor(((limit ?? 0) - 64 - 64 - 20 * 4) / 2);
    const fits = Math.floor(((limit ?? 0) - 64 - 64 - 2 * maxconn) / 4);
    const consul = await startConsul();
    const client = new ConsulClient([consul.address]);
    const names = Array.from({ length: 60 }, (_, i) => `svc${String(i).padStart(2, '0')}`);
    try {
      const store = new ConsulSpecStore(client, 'docker-flow', createLogger('warn'));
      for (const name of names) await (await store.put(spec({ serviceName: name, destinations: [{ servicePath: [`/${name}`] }] })))();
      const started = Date.now();
      const p = await startProxy(consul.address, { MAXCONN: String(maxconn) });
      try {
        const status = (await callApi(p, 'status')).body as { Services: { ServiceName: string }[]; ConfigChecks: number; ApplyCounts: Record<string, number> };
        const live = status.Services.map((s) => s.ServiceName).sort();
        // The longest run that fits, in order (the spare backends' share varies with the allocation).
        assert.ok(live.length >= fits && live.length < 60, `${live.length} applied`);
        assert.deepEqual(live, names.slice(0, live.length));
        // The whole, about log2(60) halvings, the first spec past the limit: not one apply per spec.
        const applies = Object.values(status.ApplyCounts).reduce((a, b) => a + b, 0);
        assert.ok(applies <= 12, `${applies} applies`);
        assert.ok(status.ConfigChecks <= 12, `${status.ConfigChecks} config checks`);
        assert.ok(Date.now() - started < 60_000, 'ready within a minute');
        assert.equal((await through(p, `/${names[0]}`)).status, 503, 'routed (no instance yet)');
        // Another replica edits a live service: applied alone, without trying the refused ones again.
        const checks = status.ConfigChecks;
        assert.doesNotMatch(await liveMap(p), /\/edited/);
        await (await store.put(spec({ serviceName: names[0] ?? '', destinations: [{ servicePath: ['/edited'] }] })))();
        await eventually('the edit is live', () => liveMap(p), (m) => /\/edited/.test(m));
        const after = (await callApi(p, 'status')).body as { ConfigChecks: number; Services: unknown[] };
        assert.ok(after.ConfigChecks - checks <= 1, `${after.ConfigChecks - checks} more config checks`);
        assert.equal(after.Services.length, live.length);
      } finally {
        await p.stop();
      }
    } finally {
      await client.close();
      await stopConsul(consul);
    }
  });
});
