import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { ConsulClient } from '../../src/consul/client.js';
import { ConsulInstanceSource } from '../../src/consul/instances.js';
import { ConsulWatcher } from '../../src/consul/watcher.js';
import type { Instance } from '../../src/discovery/types.js';
import { createLogger } from '../../src/util/log.js';
import { eventually, startConsulDefaultLimits, stopConsul } from '../helpers/harness.js';

const log = createLogger('warn');

async function put(consul: string, path: string, body: unknown): Promise<void> {
  const res = await fetch(`${consul}${path}`, { method: 'PUT', body: JSON.stringify(body) });
  assert.equal(res.status, 200, `${path}: ${await res.text()}`);
}

/**
 * Node queries go to the biggest nodes: every change anywhere re-reads every polled node, so a
 * big polled node costs every change its whole instance list. Nodes are placed as they appear, so
 * the dev agent's node, empty at start, takes the only node query here until a bigger one shows up.
 */
describe('node queries move to the biggest nodes', () => {
  let consul: ConsulAgent;
  let client: ConsulClient;
  let watcher: ConsulWatcher;
  let agentNode = '';
  const latest = new Map<string, string>();

  before(async () => {
    consul = await startConsulDefaultLimits();
    agentNode = ((await (await fetch(`${consul.address}/v1/agent/self`)).json()) as { Config: { NodeName: string } }).Config.NodeName;
    client = new ConsulClient([consul.address]);
    const show = (list: Instance[]) => list.map((i) => `${i.id} ${i.address}:${i.port}`).sort().join(',');
    // Three blocking queries: the catalog's, the checks', and one node.
    watcher = new ConsulWatcher(client, new ConsulInstanceSource(client, log, true), (service, list) => latest.set(service, show(list)), { waitSeconds: 30, blockingQueries: 3 }, log);
    watcher.sync(['big', 'small']);
    assert.ok(await watcher.modelReady(10_000));
  });

  after(async () => {
    watcher?.stop();
    await client?.close();
    if (consul) await stopConsul(consul);
  });

  it('the empty node first takes the query; a node with 40 instances is polled', async () => {
    // Held once the model is ready, or at once after: its query may be between two answers.
    await eventually('the agent node has the node query', async () => JSON.stringify(watcher.nodeQueries()), (v) => v === JSON.stringify([agentNode]));
    for (let i = 0; i < 40; i++) await put(consul.address, '/v1/catalog/register', { Node: 'big-host', Address: '127.0.0.9', Service: { ID: `big.${i}`, Service: 'big', Address: '127.0.0.9', Port: 2000 + i } });
    await eventually('big has 40 instances', async () => latest.get('big') ?? '', (v) => v.split(',').length === 40);
    assert.deepEqual(watcher.stats().polledNodes, 1);
  });

  it("at the small node's next answer, its query goes to the big node; both keep being followed", async () => {
    await put(consul.address, '/v1/agent/service/register', { ID: 'small.0', Name: 'small', Address: '127.0.0.8', Port: 3000 });
    await eventually('small is seen', async () => latest.get('small') ?? '', (v) => v === 'small.0 127.0.0.8:3000');
    await eventually('big-host has the node query', async () => watcher.nodeQueries(), (q) => q.join() === 'big-host');
    assert.equal(watcher.stats().polledNodes, 1, 'the agent node is polled now');
    // A change on each: the watched big node by its query, the polled agent node by the detector.
    await put(consul.address, '/v1/catalog/register', { Node: 'big-host', Address: '127.0.0.9', Service: { ID: 'big.40', Service: 'big', Address: '127.0.0.9', Port: 2040 } });
    await eventually('big has 41 instances', async () => latest.get('big') ?? '', (v) => v.split(',').length === 41);
    await put(consul.address, '/v1/agent/service/register', { ID: 'small.1', Name: 'small', Address: '127.0.0.8', Port: 3001 });
    await eventually('small has 2 instances', async () => latest.get('small') ?? '', (v) => v === 'small.0 127.0.0.8:3000,small.1 127.0.0.8:3001');
    assert.equal(watcher.stats().blockingQueries, 3);
  });
});
