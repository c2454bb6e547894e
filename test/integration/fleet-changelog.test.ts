import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { changesPrefix, changesSince, entryValue, parseLog, RING_SLOTS, writerSegment } from '../../src/consul/change-log.js';
import { ConsulClient } from '../../src/consul/client.js';
import { ConsulSpecStore } from '../../src/consul/spec-store.js';
import { type Fleet, specsHash } from '../../src/fleet.js';
import { spec } from '../../src/spec/defaults.js';
import { createLogger } from '../../src/util/log.js';
import { callApi, eventually, startConsul, startProxy, stopConsul, type TestProxy } from '../helpers/harness.js';

/**
 * The change log beside the shared specs (src/consul/change-log.ts): every write of a spec logs the
 * service's name in the same transaction, and replicas read only the specs the log names.
 */
describe('change log of the shared specs', () => {
  let consul: ConsulAgent;
  let client: ConsulClient;
  const proxies: TestProxy[] = [];
  const log = createLogger('error');

  before(async () => {
    consul = await startConsul();
    client = new ConsulClient([consul.address], 5000);
  });

  after(async () => {
    for (const p of proxies) await p.stop().catch(() => undefined);
    await client?.close();
    if (consul) await stopConsul(consul);
  });

  const web = (name: string, path = `/${name}`) => spec({ serviceName: name, destinations: [{ servicePath: [path] }] });

  async function kv(key: string): Promise<{ value: string; modifyIndex: number } | undefined> {
    const res = await client.request(`/v1/kv/${key}`);
    if (res.status === 404) return undefined;
    const [e] = JSON.parse(res.body) as { Value: string | null; ModifyIndex: number }[];
    return e ? { value: Buffer.from(e.Value ?? '', 'base64').toString('utf8'), modifyIndex: e.ModifyIndex } : undefined;
  }

  async function ring(instance: string, writer: string) {
    const res = await client.request(`/v1/kv/${changesPrefix(instance)}${writer}/?recurse`);
    const entries = res.status === 404 ? [] : (JSON.parse(res.body) as { Key: string; Value: string | null; ModifyIndex: number }[]);
    return parseLog(
      changesPrefix(instance),
      entries.map((e) => ({ key: e.Key, value: Buffer.from(e.Value ?? '', 'base64').toString('utf8'), modifyIndex: e.ModifyIndex })),
    ).sort((a, b) => a.slot - b.slot);
  }

  function storeOf(instance: string, writer: string): ConsulSpecStore {
    const store = new ConsulSpecStore(client, instance, log);
    store.setWriter(writer);
    return store;
  }

  describe('writing', () => {
    it('a write and its log entry land in one transaction, at one index', async () => {
      const store = storeOf('w1', 'writer-a');
      const landed = await (await store.put(web('books')))();
      assert.equal((await kv('w1/_dfp/services/books'))?.modifyIndex, landed);
      const [first] = await ring('w1', 'writer-a');
      assert.deepEqual([first?.slot, first?.service, first?.prev, first?.modifyIndex], [0, 'books', 0, landed]);
      // An undo whose check fails changes nothing, its log entry included: the transaction is one.
      assert.equal(await store.undo('books', landed - 1, undefined), undefined);
      assert.equal((await ring('w1', 'writer-a')).length, 1);
      const removedAt = await store.delete('books');
      assert.equal(await kv('w1/_dfp/services/books'), undefined);
      const after = await ring('w1', 'writer-a');
      assert.deepEqual([after[1]?.service, after[1]?.modifyIndex], ['books', removedAt]);
      // A write-back (create-only) is logged too, and an existing key is left alone, unlogged.
      assert.equal(await store.create(web('books')), true);
      assert.equal(await store.create(web('books', '/other')), false);
      assert.deepEqual(
        (await ring('w1', 'writer-a')).map((e) => e.service),
        ['books', 'books', 'books'],
      );
    });

    it('a restarted writer goes on after its newest entry; a slot written by someone else is read again', async () => {
      const first = storeOf('w2', 'writer-b');
      for (const name of ['a', 'b', 'c']) await first.put(web(name));
      const again = storeOf('w2', 'writer-b');
      await again.put(web('d'));
      const entries = await ring('w2', 'writer-b');
      assert.deepEqual(
        entries.map((e) => [e.slot, e.service]),
        [
          [0, 'a'],
          [1, 'b'],
          [2, 'c'],
          [3, 'd'],
        ],
      );
      // Slot 4 written behind the store's back: its check-and-set fails, the slot is read, the write goes through.
      await client.request(`/v1/kv/${changesPrefix('w2')}writer-b/4`, { method: 'PUT', body: entryValue('by-hand', 0) });
      const byHand = (await kv(`${changesPrefix('w2')}writer-b/4`))?.modifyIndex ?? 0;
      const landed = await (await again.put(web('e')))();
      const slot = (await ring('w2', 'writer-b')).find((e) => e.service === 'e');
      assert.equal(slot?.modifyIndex, landed);
      assert.ok(slot?.slot === 4 ? slot.prev === byHand : slot?.slot === 5, `entry of e: ${JSON.stringify(slot)}`);
    });

    it('a ring deleted under a writer (Consul lost its data, or it was idle) costs the next write one more try', async () => {
      const store = storeOf('w4', 'writer-d');
      for (let i = 0; i < RING_SLOTS; i++) await store.put(web(`s${i % 4}`, `/v${i}`));
      await client.request(`/v1/kv/${changesPrefix('w4')}writer-d/?recurse`, { method: 'DELETE' });
      // Every slot this store knows is stale now; the write reads the ring again, not slot after slot.
      const sent = client.stats().sent.request;
      const landed = await (await store.put(web('after')))();
      const entries = await ring('w4', 'writer-d');
      assert.deepEqual(
        entries.map((e) => [e.service, e.prev, e.modifyIndex]),
        [['after', 0, landed]],
      );
      // Read the spec, the stale try, the ring, the write (one retried connection at most); slot by slot it took over 20.
      assert.ok(client.stats().sent.request - sent <= 6, `requests for the write: ${client.stats().sent.request - sent}`);
    });

    it('concurrent writes of one writer take different slots; the ring wraps, and the reader sees where it wrapped', async () => {
      const store = storeOf('w3', 'writer-c');
      const batch = await Promise.all(Array.from({ length: 10 }, async (_, i) => (await store.put(web(`s${i}`)))()));
      assert.deepEqual((await ring('w3', 'writer-c')).map((e) => e.service).sort(), Array.from({ length: 10 }, (_, i) => `s${i}`).sort());
      const indexes: number[] = [];
      for (let i = 10; i < RING_SLOTS + 6; i++) indexes.push(await (await store.put(web(`s${i % 3}`, `/v${i}`)))());
      const entries = await ring('w3', 'writer-c');
      assert.equal(entries.length, RING_SLOTS);
      // A reader that holds everything up to the 60th write sees the last few as ordinary changes...
      const late = changesSince(entries, indexes[49] ?? 0);
      assert.ok('services' in late, JSON.stringify(late));
      // ...one that held none of the first (concurrent) writes would miss the ones overwritten
      // since, and is told to read everything.
      const early = changesSince(entries, Math.min(...batch) - 1, 1000);
      assert.ok('full' in early && /wrapped/.test(early.full), JSON.stringify(early));
    });
  });

  describe('following', () => {
    let a: TestProxy;
    let b: TestProxy;
    const fleet = (p: TestProxy) => (p.proxy as unknown as { fleet: Fleet }).fleet;
    const hashOf = async (p: TestProxy) => ((await callApi(p, 'status')).body as unknown as { Fleet: { SpecsHash: string } }).Fleet.SpecsHash;
    const names = async (p: TestProxy) => Object.keys((await callApi(p, 'config', { type: 'json' })).body);
    const storedHash = async (instance: string) => specsHash((await new ConsulSpecStore(client, instance, log).list()).specs.values());

    before(async () => {
      // Long waits: no blocking read ends empty during a test, so every full read below has another cause.
      a = await startProxy(consul.address, { PROXY_INSTANCE_NAME: 'f', CONSUL_WATCH_WAIT: '120' });
      b = await startProxy(consul.address, { PROXY_INSTANCE_NAME: 'f', CONSUL_WATCH_WAIT: '120' });
      proxies.push(a, b);
    });

    it("another replica's changes are read from the log, spec by spec, without reading every spec", async () => {
      // Services that stay: each change must not cost a read of these.
      for (let i = 0; i < 5; i++) assert.equal((await callApi(b, 'reconfigure', { serviceName: `base${i}`, servicePath: `/base${i}` })).status, 200);
      await eventually('a has the base services', () => Promise.all([hashOf(a), hashOf(b)]), ([x, y]) => x === y);
      const before = { ...fleet(a).reads };
      assert.equal((await callApi(b, 'reconfigure', { serviceName: 'books', servicePath: '/books' })).status, 200);
      await eventually('a routes books', () => names(a), (n) => n.includes('books'));
      assert.equal((await callApi(b, 'remove', { serviceName: 'base0' })).status, 200);
      await eventually('a drops base0', () => names(a), (n) => !n.includes('base0'));
      const reads = fleet(a).reads;
      assert.equal(reads.full, before.full, 'no full read of the specs');
      assert.ok(reads.logged > before.logged, `read from the log: ${JSON.stringify(reads)}`);
      assert.ok(reads.specsFetched - before.specsFetched <= 4, `at most the changed specs fetched (once more each for a re-read): ${JSON.stringify(reads)}`);
      assert.equal(await hashOf(a), await storedHash('f'));
      // The log's folder key exists, so the blocking read on the log does not wake on writes near it (kv.ts).
      assert.ok(await kv(changesPrefix('f')), 'folder key of the change log');
    });

    it('a burst of more changes than the log is worth ends in one full read, with the same specs', async () => {
      const before = fleet(a).reads.full;
      fleet(a).incrementalLimit = 10;
      // 20 services and their log entries in one transaction: one step of a's watch sees them all.
      const doc = (await kv('f/_dfp/services/books'))?.value ?? '';
      assert.match(doc, /books/);
      const b64 = (t: string) => Buffer.from(t).toString('base64');
      const ops = Array.from({ length: 20 }, (_, i) => [
        { KV: { Verb: 'set', Key: `f/_dfp/services/burst${i}`, Value: b64(doc.replace(/books/g, `burst${i}`)) } },
        { KV: { Verb: 'cas', Key: `${changesPrefix('f')}burst-writer/${i}`, Value: b64(entryValue(`burst${i}`, 0)), Index: 0 } },
      ]).flat();
      const res = await client.request('/v1/txn', { method: 'PUT', body: JSON.stringify(ops) });
      assert.equal(res.status, 200, res.body);
      await eventually('a has the burst', () => Promise.all([hashOf(a), storedHash('f')]), ([x, y]) => x === y);
      assert.ok((await names(a)).includes('burst19'));
      assert.equal(fleet(a).reads.full, before + 1, 'one full read');
      fleet(a).incrementalLimit = 32;
    });

    it('an entry that overwrote one a replica never saw (a wrapped ring) ends in a full read, with the same specs', async () => {
      const before = fleet(a).reads.full;
      // What a wrapped ring looks like to a reader: an entry whose slot held one newer than what it has read.
      const doc = JSON.stringify({ v: 1, spec: JSON.parse(JSON.stringify({ serviceName: 'wrapped' })) });
      await client.request('/v1/kv/f/_dfp/services/wrapped', { method: 'PUT', body: (await kv('f/_dfp/services/books'))?.value.replace(/books/g, 'wrapped') ?? doc });
      // 'unseen' is not the service that changed: only a full read finds 'wrapped'.
      await client.request(`/v1/kv/${changesPrefix('f')}ghost/0`, { method: 'PUT', body: entryValue('unseen', fleet(a).kvIndex + 1_000_000) });
      await eventually('a routes wrapped', () => names(a), (n) => n.includes('wrapped'));
      // b too, before the ghost entry goes (b may not have read it yet, and 'wrapped' has no entry of its own).
      await eventually('b routes wrapped', () => names(b), (n) => n.includes('wrapped'));
      assert.ok(fleet(a).reads.full > before, 'a full read');
      assert.equal(await hashOf(a), await storedHash('f'));
      await client.request(`/v1/kv/${changesPrefix('f')}ghost/?recurse`, { method: 'DELETE' });
    });

    it('a spec written to KV by hand (no log entry) is picked up by the periodic full read', async () => {
      const books = (await kv('f/_dfp/services/books'))?.value ?? '';
      await client.request('/v1/kv/f/_dfp/services/manual', { method: 'PUT', body: books.replace(/books/g, 'manual') });
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(!(await names(a)).includes('manual'), 'the log does not name it');
      // Due at the next change of the log (a busy fleet's log never times out).
      fleet(a).fullReadEveryMs = 100;
      assert.equal((await callApi(b, 'reconfigure', { serviceName: 'trigger', servicePath: '/trigger' })).status, 200);
      await eventually('a routes manual', () => names(a), (n) => n.includes('manual') && n.includes('trigger'));
      fleet(a).fullReadEveryMs = 5 * 60 * 1000;
      // And when the blocking read ends with no change (every CONSUL_WATCH_WAIT): a replica waiting 1 s.
      const c = await startProxy(consul.address, { PROXY_INSTANCE_NAME: 'f', CONSUL_WATCH_WAIT: '1' });
      proxies.push(c);
      await client.request('/v1/kv/f/_dfp/services/manual2', { method: 'PUT', body: books.replace(/books/g, 'manual2') });
      await eventually('c routes manual2', () => names(c), (n) => n.includes('manual2'), 8000);
      // b (and a for manual2), whose next full read is minutes away, never saw them: removed
      // through a store (logged), they leave no difference behind.
      await storeOf('f', 'cleanup').delete('manual');
      await storeOf('f', 'cleanup').delete('manual2');
    });

    it('rings idle for an hour are deleted by a full read, other rings stay', async () => {
      const hourAgo = Date.now() - 3_700_000;
      for (const slot of [0, 1]) await client.request(`/v1/kv/${changesPrefix('f')}gone-writer/${slot}`, { method: 'PUT', body: entryValue('books', 0, hourAgo - slot) });
      // The recent entry first: c (CONSUL_WATCH_WAIT=1) reads everything every second and would take a ring of only the old one for idle.
      await client.request(`/v1/kv/${changesPrefix('f')}quiet-writer/1`, { method: 'PUT', body: entryValue('books', 0, Date.now() - 60_000) });
      await client.request(`/v1/kv/${changesPrefix('f')}quiet-writer/0`, { method: 'PUT', body: entryValue('books', 0, hourAgo) });
      fleet(a).fullReadEveryMs = 0;
      assert.equal((await callApi(b, 'reconfigure', { serviceName: 'gc-trigger', servicePath: '/gc-trigger' })).status, 200);
      await eventually('the idle ring deleted', () => ring('f', 'gone-writer'), (entries) => entries.length === 0);
      fleet(a).fullReadEveryMs = 5 * 60 * 1000;
      assert.equal((await ring('f', 'quiet-writer')).length, 2, 'a ring with an entry younger than an hour stays');
      assert.ok((await ring('f', writerSegment(String(((await callApi(b, 'status')).body.Fleet as { ReplicaId: string }).ReplicaId)))).length > 0, "b's own ring stays");
      await client.request(`/v1/kv/${changesPrefix('f')}quiet-writer/?recurse`, { method: 'DELETE' });
    });

    it('two replicas writing at once converge on the stored specs', async () => {
      await Promise.all(
        Array.from({ length: 12 }, (_, i) => callApi(i % 2 === 0 ? a : b, 'reconfigure', { serviceName: `both${i % 6}`, servicePath: `/both${i % 6}`, addReqHeader: `X-By ${i}` })),
      );
      const stored = await storedHash('f');
      await eventually('a agrees', () => hashOf(a), (h) => h === stored);
      await eventually('b agrees', () => hashOf(b), (h) => h === stored).catch(async (err) => {
        const kvNames = [...(await new ConsulSpecStore(client, 'f', log).list()).specs.keys()].sort();
        throw new Error(`${err}; b: ${(await names(b)).sort()}; KV: ${kvNames}; reads ${JSON.stringify(fleet(b).reads)}`);
      });
    });
  });
});
