import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { ConsulClient } from '../../src/consul/client.js';
import { ConsulInstanceSource } from '../../src/consul/instances.js';
import { registratorBody } from '../../src/consul/registrator.js';
import { ConsulWatcher } from '../../src/consul/watcher.js';
import type { Instance } from '../../src/discovery/types.js';
import { createLogger, parseLevel } from '../../src/util/log.js';
import { eventually, startConsulDefaultLimits, stopConsul } from '../helpers/harness.js';

/**
 * One suite, run against every way the proxy learns instances: direct reads of
 * `/v1/health/service/<name>?passing` (what a reconfigure does), and the catalog model the watcher
 * keeps from per-node queries (all nodes followed one by one; some past the node-watch budget and
 * re-read through the change detector; all of them re-read). For the same registrations,
 * deregistrations and check states, every one must give the same instances.
 */

const log = createLogger(parseLevel(process.env.TEST_LOG_LEVEL ?? 'error'));

interface Discovery {
  /** `id address:port`, sorted; undefined while it cannot tell yet. */
  read(service: string): Promise<string[] | undefined>;
  /** Every list reported for a service so far (model only). */
  history?(service: string): string[][];
  close(): Promise<void>;
}

type Make = (consul: string, passingOnly: boolean, services: readonly string[]) => Discovery;

const show = (list: readonly Instance[]) => list.map((i) => `${i.id} ${i.address}:${i.port}`).sort();

const direct: Make = (consul, passingOnly) => {
  const client = new ConsulClient([consul]);
  const source = new ConsulInstanceSource(client, log, passingOnly);
  return { read: async (service) => show(await source.instances(service)), close: () => client.close() };
};

/** The watcher's catalog model; `blockingQueries` small enough puts nodes past the node-watch budget. */
const model =
  (blockingQueries?: number): Make =>
  (consul, passingOnly, services) => {
    const client = new ConsulClient([consul]);
    const source = new ConsulInstanceSource(client, log, passingOnly);
    const latest = new Map<string, string[]>();
    const history = new Map<string, string[][]>();
    const watcher = new ConsulWatcher(
      client,
      source,
      (service, list) => {
        latest.set(service, show(list));
        history.set(service, [...(history.get(service) ?? []), show(list)]);
      },
      { waitSeconds: 30, ...(blockingQueries === undefined ? {} : { blockingQueries }) },
      log,
    );
    watcher.sync(services);
    return {
      read: async (service) => latest.get(service),
      history: (service) => history.get(service) ?? [],
      async close() {
        watcher.stop();
        await client.close();
      },
    };
  };

async function put(consul: string, path: string, body?: unknown): Promise<void> {
  const res = await fetch(`${consul}${path}`, { method: 'PUT', ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  if (!res.ok || text.trim() === 'false') throw new Error(`PUT ${path}: ${res.status} ${text}`);
}

interface Step {
  readonly name: string;
  run(consul: string): Promise<void>;
  /** Instances per service with CONSUL_PASSING_ONLY (the default). */
  readonly passing: Readonly<Record<string, readonly string[]>>;
  /** With CONSUL_PASSING_ONLY=false, where it differs. */
  readonly any?: Readonly<Record<string, readonly string[]>>;
  /** No list reported for the service after this step started may contain this text (model only). */
  readonly never?: { readonly service: string; readonly text: string };
}

const WEB0 = 'host1:web.0:80 127.0.0.1:9000';
const WEB1 = 'host1:web.1:80 127.0.0.1:9001';
const SERVICES = ['web', 'dup', 'mixed', 'hosty', 'none'];

function steps(): Step[] {
  const ttlWeb1 = 'service:host1:web.1:80';
  return [
    {
      name: 'registered as Registrator does, no check',
      run: (c) => put(c, '/v1/agent/service/register', registratorBody({ name: 'web', container: 'web.0', exposedPort: 80, hostPort: 9000 }).body),
      passing: { web: [WEB0], none: [] },
    },
    {
      name: 'a TTL check starts critical',
      run: (c) => put(c, '/v1/agent/service/register', { ...registratorBody({ name: 'web', container: 'web.1', exposedPort: 80, hostPort: 9001 }).body, Check: { TTL: '60s' } }),
      passing: { web: [WEB0] },
      any: { web: [WEB0, WEB1] },
      // The registration and its check land in one write: the instance is never routable meanwhile.
      never: { service: 'web', text: 'web.1' },
    },
    { name: 'the TTL check passes', run: (c) => put(c, `/v1/agent/check/pass/${ttlWeb1}`), passing: { web: [WEB0, WEB1] } },
    { name: 'the TTL check warns', run: (c) => put(c, `/v1/agent/check/warn/${ttlWeb1}`), passing: { web: [WEB0] }, any: { web: [WEB0, WEB1] } },
    { name: 'the TTL check passes again', run: (c) => put(c, `/v1/agent/check/pass/${ttlWeb1}`), passing: { web: [WEB0, WEB1] } },
    {
      name: 'service maintenance mode',
      run: (c) => put(c, `/v1/agent/service/maintenance/${encodeURIComponent('host1:web.0:80')}?enable=true&reason=test`),
      passing: { web: [WEB1] },
      any: { web: [WEB0, WEB1] },
    },
    { name: 'service maintenance off', run: (c) => put(c, `/v1/agent/service/maintenance/${encodeURIComponent('host1:web.0:80')}?enable=false`), passing: { web: [WEB0, WEB1] } },
    {
      name: 'a critical node check takes every instance of the node out',
      run: (c) => put(c, '/v1/agent/check/register', { ID: 'node-ttl', Name: 'node ttl', TTL: '60s', Status: 'critical' }),
      passing: { web: [] },
      any: { web: [WEB0, WEB1] },
    },
    { name: 'the node check passes', run: (c) => put(c, '/v1/agent/check/pass/node-ttl'), passing: { web: [WEB0, WEB1] } },
    { name: 'node maintenance mode', run: (c) => put(c, '/v1/agent/maintenance?enable=true&reason=test'), passing: { web: [] }, any: { web: [WEB0, WEB1] } },
    { name: 'node maintenance off', run: (c) => put(c, '/v1/agent/maintenance?enable=false'), passing: { web: [WEB0, WEB1] } },
    {
      name: 'the same service ID on two nodes (catalog registrations)',
      async run(c) {
        await put(c, '/v1/catalog/register', { Node: 'ext-a', Address: '10.0.0.1', Service: { ID: 'dup-1', Service: 'dup', Port: 8080 } });
        await put(c, '/v1/catalog/register', { Node: 'ext-b', Address: '10.0.0.2', Service: { ID: 'dup-1', Service: 'dup', Address: '10.0.0.22', Port: 8080 } });
      },
      passing: { dup: ['dup-1@ext-a 10.0.0.1:8080', 'dup-1@ext-b 10.0.0.22:8080'] },
    },
    {
      name: "a critical check on one of them (the other's ID loses its @node)",
      run: (c) =>
        put(c, '/v1/catalog/register', { Node: 'ext-b', Address: '10.0.0.2', Check: { CheckID: 'dup-check', Name: 'dup check', ServiceID: 'dup-1', Status: 'critical' } }),
      passing: { dup: ['dup-1 10.0.0.1:8080'] },
      any: { dup: ['dup-1@ext-a 10.0.0.1:8080', 'dup-1@ext-b 10.0.0.22:8080'] },
    },
    {
      name: 'the check passes',
      run: (c) =>
        put(c, '/v1/catalog/register', { Node: 'ext-b', Address: '10.0.0.2', Check: { CheckID: 'dup-check', Name: 'dup check', ServiceID: 'dup-1', Status: 'passing' } }),
      passing: { dup: ['dup-1@ext-a 10.0.0.1:8080', 'dup-1@ext-b 10.0.0.22:8080'] },
    },
    {
      name: 'a critical node-level check on an external node',
      run: (c) => put(c, '/v1/catalog/register', { Node: 'ext-a', Address: '10.0.0.1', Check: { CheckID: 'ext-a-node', Name: 'node', Status: 'critical' } }),
      passing: { dup: ['dup-1 10.0.0.22:8080'] },
      any: { dup: ['dup-1@ext-a 10.0.0.1:8080', 'dup-1@ext-b 10.0.0.22:8080'] },
    },
    {
      name: 'the node-level check removed',
      run: (c) => put(c, '/v1/catalog/deregister', { Node: 'ext-a', CheckID: 'ext-a-node' }),
      passing: { dup: ['dup-1@ext-a 10.0.0.1:8080', 'dup-1@ext-b 10.0.0.22:8080'] },
    },
    {
      name: 'service names match case-insensitively, as in Consul',
      run: (c) => put(c, '/v1/catalog/register', { Node: 'ext-a', Address: '10.0.0.1', Service: { ID: 'mixed-1', Service: 'Mixed', Port: 81 } }),
      passing: { mixed: ['mixed-1 10.0.0.1:81'] },
    },
    {
      name: 'an instance without an IP address is skipped',
      async run(c) {
        await put(c, '/v1/catalog/register', { Node: 'ext-a', Address: '10.0.0.1', Service: { ID: 'host-1', Service: 'hosty', Address: 'my-host.local', Port: 82 } });
        await put(c, '/v1/catalog/register', { Node: 'ext-a', Address: '10.0.0.1', Service: { ID: 'ok-1', Service: 'hosty', Address: '10.1.1.1', Port: 83 } });
      },
      passing: { hosty: ['ok-1 10.1.1.1:83'] },
    },
    { name: 'deregistered as Registrator does', run: (c) => put(c, `/v1/agent/service/deregister/${encodeURIComponent('host1:web.1:80')}`), passing: { web: [WEB0] } },
    {
      name: 'an instance whose check recovers by leaving with it never comes back',
      async run(c) {
        await put(c, '/v1/catalog/register', { Node: 'ext-b', Address: '10.0.0.2', Check: { CheckID: 'dup-check', Name: 'dup check', ServiceID: 'dup-1', Status: 'critical' } });
        await eventually('the check is critical', async () => (await (await fetch(`${c}/v1/health/service/dup?passing`)).json()) as unknown[], (l) => l.length === 1);
        await new Promise((r) => setTimeout(r, 300));
        // Deregistering the service deletes its critical check in the same write.
        await put(c, '/v1/catalog/deregister', { Node: 'ext-b', ServiceID: 'dup-1' });
      },
      passing: { dup: ['dup-1 10.0.0.1:8080'] },
      any: { dup: ['dup-1 10.0.0.1:8080'] },
      never: { service: 'dup', text: '10.0.0.22' },
    },
    { name: 'a node deregistered with its instances', run: (c) => put(c, '/v1/catalog/deregister', { Node: 'ext-a' }), passing: { dup: [], mixed: [], hosty: [] } },
    {
      name: 'a node that joins later',
      run: (c) => put(c, '/v1/catalog/register', { Node: 'ext-c', Address: '10.0.0.3', Service: { ID: 'dup-9', Service: 'DUP', Port: 9999 } }),
      passing: { dup: ['dup-9 10.0.0.3:9999'] },
    },
    {
      // Regression: the change detector was a query for a service no one registers, which Consul
      // 1.8 answers with the index of the last extinction (the step before last made `mixed` and
      // `hosty` extinct): registrations on nodes past the budget no longer woke it.
      name: 'a registration on a node past the budget after a service went extinct',
      run: (c) => put(c, '/v1/catalog/register', { Node: 'ext-c', Address: '10.0.0.3', Service: { ID: 'dup-10', Service: 'dup', Port: 9998 } }),
      passing: { dup: ['dup-10 10.0.0.3:9998', 'dup-9 10.0.0.3:9999'] },
    },
  ];
}

function suite(name: string, make: Make, passingOnly: boolean): void {
  describe(`${name}, CONSUL_PASSING_ONLY=${passingOnly}`, () => {
    let consul: ConsulAgent;
    let discovery: Discovery;
    let reference: Discovery;

    before(async () => {
      consul = await startConsulDefaultLimits();
      discovery = make(consul.address, passingOnly, SERVICES);
      reference = direct(consul.address, passingOnly, SERVICES);
    });

    after(async () => {
      await discovery?.close();
      await reference?.close();
      if (consul) await stopConsul(consul);
    });

    for (const step of steps()) {
      it(step.name, async () => {
        const reportsBefore = step.never ? (discovery.history?.(step.never.service).length ?? 0) : 0;
        await step.run(consul.address);
        const expected = { ...step.passing, ...(passingOnly ? {} : step.any) };
        for (const [service, list] of Object.entries(expected)) {
          const got = await eventually(`${service}: ${list.join(', ')}`, () => discovery.read(service), (l) => JSON.stringify(l) === JSON.stringify(list), 15_000);
          // ... and a consistent read agrees at that point.
          assert.deepEqual(await reference.read(service), got, `${service}: direct read`);
        }
        if (step.never && passingOnly && discovery.history) {
          const since = discovery.history(step.never.service).slice(reportsBefore);
          assert.ok(!since.some((l) => l.some((i) => i.includes(step.never?.text ?? ''))), `never reported: ${JSON.stringify(since)}`);
        }
      });
    }
  });
}

for (const passingOnly of [true, false]) {
  suite('direct reads of /v1/health/service/<name>', direct, passingOnly);
  suite('catalog model, every node followed by its own query', model(), passingOnly);
}
// Three nodes, one node watch (3 queries: the catalog's change detector, the checks, one node): two polled.
suite('catalog model, nodes past the budget re-read on change', model(3), true);
// No node watch at all: every node re-read when the detector fires.
suite('catalog model, every node re-read on change', model(2), true);
