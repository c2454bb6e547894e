import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { type ApiAnswer, callApi, eventually, startConsul, startProxy, stopConsul, type TestProxy } from '../helpers/harness.js';

const PREFIX = 'docker-flow/_dfp/services/';

/**
 * Regression (issue 9, item 4): a reconfigure stores its spec in Consul KV, then fails to apply
 * here, and takes the spec back out. The take-back used to write over whatever the key held by
 * then, so another replica's newer write of the same service was lost (and every replica followed
 * the loss). It must check-and-set against the index its own write landed at.
 *
 * The local apply fails for real: the HAProxy master of replica A is stopped (SIGSTOP), so a change
 * that needs a reload passes `haproxy -c`, is stored, and then fails when the master does not
 * answer on its socket (5 s); meanwhile replica B writes the same key, through its own API.
 */
describe('rolling back a stored spec whose local apply failed', () => {
  let consul: ConsulAgent;
  let a: TestProxy;
  let b: TestProxy;

  before(async () => {
    consul = await startConsul();
    a = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30' });
    b = await startProxy(consul.address, { CONSUL_WATCH_WAIT: '30' });
  });

  after(async () => {
    for (const p of [a, b]) await p?.stop().catch(() => undefined);
    if (consul) await stopConsul(consul);
  });

  async function kv(service: string): Promise<{ index: number; value: string } | undefined> {
    const res = await fetch(`${consul.address}/v1/kv/${PREFIX}${service}`);
    if (res.status === 404) return undefined;
    const [entry] = (await res.json()) as { ModifyIndex: number; Value: string }[];
    return entry && { index: entry.ModifyIndex, value: Buffer.from(entry.Value, 'base64').toString('utf8') };
  }

  async function ok(p: TestProxy, params: Record<string, string>): Promise<void> {
    const res = await callApi(p, 'reconfigure', params);
    assert.equal(res.status, 200, res.text);
  }

  /**
   * A reconfigure on A whose apply fails (A's HAProxy master stopped), with `meanwhile` run once
   * A's write is in KV and before A answers. Returns A's answer.
   */
  async function failingOnA(params: Record<string, string>, meanwhile: () => Promise<void>): Promise<ApiAnswer> {
    const dry = await callApi(a, 'reconfigure', { ...params, dryRun: 'true' });
    assert.equal(dry.body.ApplyKind, 'reload', `the change must need a reload (the runtime API does not go through the master): ${dry.text}`);
    const before = (await kv(params.serviceName as string))?.index ?? 0;
    const master = a.proxy.haproxy.status().masterPid as number;
    process.kill(master, 'SIGSTOP');
    try {
      let answered = false;
      const answer = callApi(a, 'reconfigure', params).finally(() => (answered = true));
      await eventually('A’s write in KV', () => kv(params.serviceName as string), (e) => (e?.index ?? 0) > before, 4000);
      await meanwhile();
      // The other write must land between A's write and A's take-back, or this test proves nothing.
      assert.equal(answered, false, 'A answered before the other write landed');
      const res = await answer;
      assert.notEqual(res.status, 200, res.text);
      assert.match(String(res.body.Code), /^DFP_ERR_(HAPROXY_UNAVAILABLE|RELOAD_FAILED)$/, res.text);
      return res;
    } finally {
      process.kill(master, 'SIGCONT');
    }
  }

  /** The live config and route map of a replica: where its routes are. */
  async function routes(p: TestProxy): Promise<string> {
    return `${(await callApi(p, 'config')).text}\n${readFileSync(path.join(p.stateDir, 'routes-prefix.map'), 'utf8')}`;
  }

  /** Both replicas serve the same specs, and route `route`. */
  async function bothServe(route: string): Promise<void> {
    await eventually(
      `both replicas agree and route ${route}`,
      async () => Promise.all([a, b].map(async (p) => [((await callApi(p, 'status')).body.Fleet as { SpecsHash: string }).SpecsHash, await routes(p)] as const)),
      (seen) => seen.every(([hash, text]) => hash === seen[0]?.[0] && text.includes(route)),
      15_000,
    );
  }

  it('an update: another replica’s newer write of the service stays', async () => {
    await ok(a, { serviceName: 'books', servicePath: '/books', wait: 'all' });
    await failingOnA({ serviceName: 'books', servicePath: '/books', addReqHeader: 'X-Seen yes' }, () => ok(b, { serviceName: 'books', servicePath: '/books-v2' }));
    const stored = await kv('books');
    assert.match(stored?.value ?? '', /\/books-v2/, `B's write was overwritten by A's rollback: ${stored?.value}`);
    await bothServe('/books-v2');
    assert.match((await kv('books'))?.value ?? '', /\/books-v2/);
  });

  it('a new service: another replica’s write of it is not deleted', async () => {
    await failingOnA({ serviceName: 'fresh', servicePath: '^/fresh/', pathType: 'path_reg' }, () => ok(b, { serviceName: 'fresh', servicePath: '/fresh-v2' }));
    const stored = await kv('fresh');
    assert.match(stored?.value ?? '', /\/fresh-v2/, `B's write was deleted by A's rollback: ${stored?.value}`);
    await bothServe('/fresh-v2');
  });

  it('with no other write in between, the rollback still puts the previous spec back (or deletes a new one)', async () => {
    await ok(a, { serviceName: 'users', servicePath: '/users', wait: 'all' });
    const previous = await kv('users');
    await failingOnA({ serviceName: 'users', servicePath: '/users', addReqHeader: 'X-Seen yes' }, async () => undefined);
    const back = await kv('users');
    assert.equal(back?.value, previous?.value);
    assert.ok((back?.index ?? 0) > (previous?.index ?? 0), 'written back, not left alone');
    await failingOnA({ serviceName: 'gone', servicePath: '^/gone/', pathType: 'path_reg' }, async () => undefined);
    assert.equal(await kv('gone'), undefined);
    await bothServe('/users');
  });
});
