import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConsulAgent } from '../../src/consul/agent.js';
import { freePort } from '../../src/util/ports.js';
import { type Backend, CONSUL_BIN, callApi, eventually, registerLikeRegistrator, startBackend, startProxy, tempDir, through, track } from '../helpers/harness.js';

/**
 * The fault drill on a real 3-server Consul cluster on 127.0.0.1, .2 and .3 (raft_multiplier 1):
 * kill the leader; traffic keeps flowing and reconfigure works again after the election.
 */
describe('3-server Consul cluster', () => {
  it('leader killed: traffic keeps flowing, reconfigure works again after the election', async () => {
    const ips = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
    const ports = { http: await freePort(), server: await freePort(), serfLan: await freePort(), serfWan: await freePort() };
    const servers = await Promise.all(
      ips.map((ip, i) =>
        ConsulAgent.start({
          bin: CONSUL_BIN,
          mode: 'server',
          dataDir: tempDir(),
          bindIp: ip,
          ports,
          cluster: { expect: 3, join: ips.filter((o) => o !== ip).map((o) => `${o}:${ports.serfLan}`), node: `s${i + 1}` },
        }),
      ),
    );
    for (const s of servers) track(s.pid);
    let backend: Backend | undefined;
    const proxy = await startProxy(servers.map((s) => s.address).join(','), { CONSUL_WATCH_WAIT: '10' });
    try {
      const leaderOf = async () => (await (await fetch(`${servers[0]?.address}/v1/status/leader`)).json()) as string;
      const leaderIp = (await eventually('a leader', leaderOf, (l) => l.length > 0)).split(':')[0];
      const leader = servers.find((s) => s.address.includes(`//${leaderIp}:`));
      const follower = servers.find((s) => s !== leader);
      assert.ok(leader && follower);
      backend = await startBackend('svc.0');
      // Registered on a follower's agent: the instance must outlive the leader's node.
      await registerLikeRegistrator(follower.address, { name: 'svc', container: 'svc.0', exposedPort: 80, hostPort: backend.port });
      assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '/svc' })).status, 200);
      assert.equal((await through(proxy, '/svc')).instance, 'svc.0');

      await leader.stop('SIGKILL');
      for (let i = 0; i < 10; i++) {
        assert.equal((await through(proxy, '/svc')).instance, 'svc.0', 'traffic flows during the election');
        await new Promise((r) => setTimeout(r, 50));
      }
      // Writes wait out the election (no leader = 5xx, retried) instead of failing.
      const res = await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '/svc,/after-election' });
      assert.equal(res.status, 200, res.text);
      assert.equal((await through(proxy, '/after-election')).instance, 'svc.0');
      const survivors = servers.filter((s) => s !== leader);
      const newLeader = await eventually('a new leader', async () => (await (await fetch(`${survivors[0]?.address}/v1/status/leader`)).json()) as string, (l) => l.length > 0 && !l.startsWith(`${leaderIp}:`));
      assert.ok(newLeader);
    } finally {
      await proxy.stop();
      await backend?.close();
      for (const s of servers) await s.stop('SIGKILL');
    }
  });
});
