import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { it } from 'node:test';
import { specsHash } from '../../src/fleet.js';
import { specToJson } from '../../src/spec/from-json.js';
import { spec } from '../../src/spec/defaults.js';

const specs = Array.from({ length: 200 }, (_, i) => spec({ serviceName: `svc${i}`, destinations: [{ servicePath: [`/s${i}`] }] }));

/** The same sum computed with BigInt: what the two 32-bit halves and their carry must give. */
function reference(list: readonly ReturnType<typeof spec>[]): string {
  let sum = 0n;
  for (const s of list) sum = (sum + createHash('sha256').update(specToJson(s)).digest().readBigUInt64BE(0)) % 2n ** 64n;
  return sum.toString(16).padStart(16, '0');
}

it('the agreement hash of a set of specs: order-free, by content, equal to the 64-bit sum of digests', () => {
  assert.equal(specsHash([]), '0000000000000000');
  assert.equal(specsHash(specs), reference(specs));
  assert.equal(specsHash([...specs].reverse()), specsHash(specs), 'order does not matter');
  // Equal content in other objects (another replica's parse) gives the same hash.
  const copies = specs.map((s) => JSON.parse(JSON.stringify(s)) as typeof s);
  assert.equal(specsHash(copies), specsHash(specs));
  // One spec changed, one left out: another hash.
  const changed = [...specs.slice(1), spec({ serviceName: 'svc0', destinations: [{ servicePath: ['/other'] }] })];
  assert.notEqual(specsHash(changed), specsHash(specs));
  assert.notEqual(specsHash(specs.slice(1)), specsHash(specs));
  assert.equal(specsHash(changed), reference(changed));
});
