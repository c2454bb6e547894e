import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CatalogModel, type NodeServiceEntry } from '../../src/consul/catalog.js';
import { ConsulClient } from '../../src/consul/client.js';
import { toInstances } from '../../src/consul/instances.js';
import { createLogger } from '../../src/util/log.js';

const log = createLogger('error');
const svc = (ID: string, Service: string, Port: number, ModifyIndex = 1, Address = ''): NodeServiceEntry => ({ ID, Service, Port, ModifyIndex, Address });
const ids = (m: CatalogModel, service: string, passingOnly = true) => toInstances(service, m.entries(service, passingOnly), log).map((i) => `${i.id} ${i.address}:${i.port}`);

describe('catalog model', () => {
  it('reports only the services a node read changed', () => {
    const m = new CatalogModel();
    assert.deepEqual([...m.setNode('n1', '10.0.0.1', [svc('a1', 'a', 80), svc('b1', 'b', 81)]).affected].sort(), ['a', 'b']);
    // Same read again: nothing; b re-registered (new ModifyIndex): b only; a gone: a only.
    assert.deepEqual([...m.setNode('n1', '10.0.0.1', [svc('a1', 'a', 80), svc('b1', 'b', 81)]).affected], []);
    const changed = m.setNode('n1', '10.0.0.1', [svc('a1', 'a', 80), svc('b1', 'b', 82, 2)]);
    assert.deepEqual([...changed.affected], ['b']);
    assert.equal(changed.gained, true);
    const removed = m.setNode('n1', '10.0.0.1', [svc('b1', 'b', 82, 2)]);
    assert.deepEqual([...removed.affected], ['a']);
    assert.equal(removed.gained, false);
    assert.deepEqual(ids(m, 'a'), []);
    assert.deepEqual(ids(m, 'b'), ['b1 10.0.0.1:82']);
  });

  it('a node address change moves only the instances without an address of their own', () => {
    const m = new CatalogModel();
    m.setNode('n1', '10.0.0.1', [svc('a1', 'a', 80), svc('b1', 'b', 81, 1, '10.9.9.9')]);
    assert.deepEqual([...m.setNode('n1', '10.0.0.2', [svc('a1', 'a', 80), svc('b1', 'b', 81, 1, '10.9.9.9')]).affected], ['a']);
    assert.deepEqual(ids(m, 'a'), ['a1 10.0.0.2:80']);
  });

  it('checks: ?passing semantics, node checks cover the node, recoveries are listed', () => {
    const m = new CatalogModel();
    m.setNode('n1', '10.0.0.1', [svc('a1', 'a', 80), svc('a2', 'a', 81), svc('b1', 'b', 82)]);
    m.setNode('n2', '10.0.0.2', [svc('a1', 'a', 80)]);
    assert.deepEqual(ids(m, 'a'), ['a1@n1 10.0.0.1:80', 'a2 10.0.0.1:81', 'a1@n2 10.0.0.2:80']);
    let r = m.setChecks([{ Node: 'n1', CheckID: 'c', Status: 'critical', ServiceID: 'a1', ServiceName: 'a' }]);
    assert.deepEqual([...r.affected], ['a']);
    // The ID is unique again among the routable ones: no @node.
    assert.deepEqual(ids(m, 'a'), ['a2 10.0.0.1:81', 'a1 10.0.0.2:80']);
    assert.deepEqual(ids(m, 'a', false).length, 3);
    r = m.setChecks([{ Node: 'N1', CheckID: 'maint', Status: 'critical', ServiceID: '' }]);
    assert.deepEqual([...r.affected].sort(), ['a', 'b']);
    assert.deepEqual(r.recovered, [{ node: 'n1', serviceId: 'a1', service: 'a' }]);
    assert.deepEqual(ids(m, 'b'), []);
    r = m.setChecks([{ Node: 'n1', CheckID: 'w', Status: 'warning', ServiceID: 'b1', ServiceName: 'b' }]);
    assert.deepEqual(r.recovered, [{ node: 'n1', serviceId: '', service: '' }]);
    assert.deepEqual(ids(m, 'a'), ['a1@n1 10.0.0.1:80', 'a2 10.0.0.1:81', 'a1@n2 10.0.0.2:80']);
    assert.deepEqual(ids(m, 'b'), []);
  });

  it('service names match case-insensitively; nodes and instances can be removed', () => {
    const m = new CatalogModel();
    m.setNode('n1', '10.0.0.1', [svc('w1', 'Web', 80)]);
    m.setNode('n2', '10.0.0.2', [svc('w2', 'web', 81)]);
    assert.deepEqual(ids(m, 'WEB'), ['w1 10.0.0.1:80', 'w2 10.0.0.2:81']);
    assert.deepEqual([...m.removeInstance('n1', 'w1').affected], ['web']);
    assert.deepEqual([...m.removeNode('n2').affected], ['web']);
    assert.deepEqual(ids(m, 'web'), []);
    assert.equal(m.hasNode('n2'), false);
  });
});

describe('Consul client budgets', () => {
  it('blocking queries go to the watch pool, the rest to the request pool', async () => {
    const client = new ConsulClient(['http://127.0.0.1:9'], 200, { watchConnections: 2, requestConnections: 1 });
    const seen: string[] = [];
    client.onRequest = (path, budget) => seen.push(`${budget} ${path}`);
    for (const path of ['/v1/kv/a?index=12&wait=5s', '/v1/kv/a?index=0', '/v1/kv/a?recurse', '/v1/catalog/nodes?wait=1s&index=7']) await client.request(path).catch(() => undefined);
    assert.deepEqual(seen, ['watch /v1/kv/a?index=12&wait=5s', 'request /v1/kv/a?index=0', 'request /v1/kv/a?recurse', 'watch /v1/catalog/nodes?wait=1s&index=7']);
    await client.close();
  });
});
