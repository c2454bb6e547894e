import assert from 'node:assert/strict';
import { it } from 'node:test';
import { CowMap } from '../../src/util/cow-map.js';

function random(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

const sorted = <K, V>(m: Iterable<[K, V]>) => [...m].map(([k, v]) => JSON.stringify([k, v])).sort();

it('CowMap: every layer reads like the Map it stands for, and earlier layers never change', () => {
  const rand = random(7);
  let model = new Map<string, number | undefined>();
  let layer: ReadonlyMap<string, number | undefined> = new Map(Array.from({ length: 300 }, (_, i) => [`k${i}`, i]));
  model = new Map(layer);
  const snapshots: [ReadonlyMap<string, number | undefined>, Map<string, number | undefined>][] = [];
  for (let round = 0; round < 400; round++) {
    const edit = CowMap.edit(layer);
    for (let n = Math.floor(rand() * 6); n >= 0; n--) {
      const key = `k${Math.floor(rand() * 400)}`;
      const what = rand();
      if (what < 0.4) {
        assert.equal(edit.delete(key), model.delete(key), `round ${round}: delete ${key}`);
      } else {
        const value = what < 0.45 ? undefined : Math.floor(rand() * 1000);
        edit.set(key, value);
        model.set(key, value);
      }
    }
    layer = edit;
    assert.equal(layer.size, model.size, `round ${round}: size`);
    for (let i = 0; i < 400; i++) {
      const key = `k${i}`;
      assert.equal(layer.has(key), model.has(key), `round ${round}: has ${key} before any iteration`);
      assert.equal(layer.get(key), model.get(key), `round ${round}: get ${key} before any iteration`);
    }
    // A full iteration flattens the layer (kept for the next edit): only now and then, so that
    // long runs of changes over one base (and their folding at FLATTEN_AT) are exercised too.
    if (round % 97 !== 0 && round % 5 !== 0) continue;
    assert.deepEqual(sorted(layer), sorted(model), `round ${round}: entries`);
    for (let i = 0; i < 400; i++) {
      const key = `k${i}`;
      assert.equal(layer.has(key), model.has(key), `round ${round}: has ${key}`);
      assert.equal(layer.get(key), model.get(key), `round ${round}: get ${key}`);
    }
    assert.deepEqual([...layer.keys()].sort(), [...model.keys()].sort());
    assert.deepEqual([...layer.values()].map((v) => JSON.stringify(v)).sort(), [...model.values()].map((v) => JSON.stringify(v)).sort());
    if (round % 50 === 0) snapshots.push([layer, new Map(model)]);
    // Reads of a flattened layer, and of one edited after it was flattened.
    if (round % 10 === 0) {
      const more = CowMap.edit(layer);
      more.set('extra', -1);
      assert.equal(more.get('extra'), -1);
      assert.equal(layer.has('extra'), model.has('extra'));
    }
  }
  // Hundreds of edits later (and flattened bases in between), every snapshot still reads as it did.
  for (const [snap, want] of snapshots) assert.deepEqual(sorted(snap), sorted(want));
});

it('CowMap: a changed key keeps its place; new keys come last, as in a Map', () => {
  const edit = CowMap.edit(new Map([['a', 1], ['b', 2], ['c', 3]]));
  edit.set('b', 20);
  edit.set('d', 4);
  edit.delete('a');
  assert.deepEqual([...edit], [['b', 20], ['c', 3], ['d', 4]]);
  const next = CowMap.edit(edit);
  next.set('e', 5);
  assert.deepEqual([...next.keys()], ['b', 'c', 'd', 'e']);
  assert.deepEqual([...edit.keys()], ['b', 'c', 'd'], 'the earlier layer is untouched');
  let seen = 0;
  next.forEach((v, k, m) => {
    assert.equal(m.get(k), v);
    seen++;
  });
  assert.equal(seen, 4);
});
