import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { callApi, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, through } from '../helpers/harness.js';

/**
 * A cold start (every service in Consul KV, a fresh STATE_DIR) takes the restored services'
 * instances from the catalog model, a few node reads, not one health read per service.
 */
describe('cold start from Consul KV', () => {
  it('60 restored services cost a handful of ordinary Consul requests, and every route serves', async () => {
    const consul = await startConsul();
    const backend = await startBackend('cold.0');
    const names = Array.from({ length: 60 }, (_, i) => `cold${i}`);
    try {
      for (const name of names) await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: backend.port });
      const first = await startProxy(consul.address);
      try {
        for (const name of names) assert.equal((await callApi(first, 'reconfigure', { serviceName: name, servicePath: `/${name}` })).status, 200);
      } finally {
        await first.stop();
      }
      const second = await startProxy(consul.address);
      try {
        // Counted once ready: one health read per service would be 60 on its own.
        const sent = second.proxy.consul.stats().sent.request;
        assert.ok(sent < names.length / 2, `ordinary requests until ready: ${sent}`);
        assert.equal((await through(second, '/cold0')).instance, 'cold.0');
        assert.equal((await through(second, '/cold59')).instance, 'cold.0');
      } finally {
        await second.stop();
      }
    } finally {
      await backend.close();
      await stopConsul(consul);
    }
  });
});
