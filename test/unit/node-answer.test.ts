import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { NodeServiceEntry } from '../../src/consul/catalog.js';
import { commonPrefix, commonSuffix, NodeAnswerParser, slimEntry } from '../../src/consul/node-answer.js';

/** Deterministic pseudo-random numbers (mulberry32). */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An entry as Consul 1.8.7 writes it, with the awkward characters IDs and tags may hold. */
function entry(id: string, port: number, modify: number): Record<string, unknown> {
  return {
    ID: id,
    Service: id.split('.')[0],
    Tags: ['a,b', 'x}y', 'q"{['],
    Address: '',
    Meta: { note: 'brace } bracket ] quote " backslash \\' },
    Port: port,
    Weights: { Passing: 1, Warning: 1 },
    EnableTagOverride: false,
    Proxy: { MeshGateway: {}, Expose: {} },
    Connect: {},
    CreateIndex: modify,
    ModifyIndex: modify,
  };
}

function answer(node: string, address: string, entries: Record<string, unknown>[], pretty: boolean): string {
  const body = { Node: { ID: '', Node: node, Address: address, Datacenter: 'dc1', TaggedAddresses: null, Meta: { 'x}': '"' }, CreateIndex: 5, ModifyIndex: 5 }, Services: entries };
  return pretty ? JSON.stringify(body, null, 4) : JSON.stringify(body);
}

describe('node answers parsed where they changed', () => {
  it('common prefix and suffix', () => {
    assert.equal(commonPrefix('abcdef', 'abcxef'), 3);
    assert.equal(commonSuffix('abcdef', 'abcxef', 3), 2);
    const long = 'x'.repeat(100_000);
    assert.equal(commonPrefix(`${long}a`, `${long}b`), 100_000);
    assert.equal(commonSuffix(`a${long}`, `bb${long}`, 100_001), 100_000);
  });

  for (const pretty of [false, true]) {
    it(`random registrations, deregistrations and changes give what a full parse gives (${pretty ? 'pretty, as a dev agent writes' : 'compact'})`, () => {
      const random = rng(pretty ? 7 : 11);
      let entries = Array.from({ length: 60 }, (_, i) => entry(`svc${String(i).padStart(3, '0')}.0`, 1000 + i, 10 + i));
      let address = '10.0.0.1';
      let index = 100;
      const parser = new NodeAnswerParser();
      const kinds = new Map<string, number>();
      for (let round = 0; round < 400; round++) {
        const r = random();
        const n = 1 + Math.floor(random() * 3);
        for (let k = 0; k < n; k++) {
          const at = Math.floor(random() * (entries.length + 1));
          if (r < 0.3) entries.splice(at, 0, entry(`new${index}.${k}`, 2000 + round, ++index));
          else if (r < 0.6 && entries.length > 0) entries.splice(Math.min(at, entries.length - 1), 1);
          else if (r < 0.9 && entries.length > 0) entries[Math.min(at, entries.length - 1)] = { ...entries[Math.min(at, entries.length - 1)], Port: 3000 + round, ModifyIndex: ++index };
          else if (r < 0.95) address = `10.0.${round % 250}.1`;
        }
        if (random() < 0.02) entries = [];
        const body = answer('n1', address, entries, pretty);
        const got = parser.parse(body);
        const want = JSON.parse(body) as { Node: unknown; Services: NodeServiceEntry[] };
        // What a full parse gives, down to the fields the model reads (slimEntry).
        assert.deepEqual(got.services, want.Services.map(slimEntry), `round ${round}`);
        assert.deepEqual(got.node, want.Node);
        kinds.set(parser.lastParse, (kinds.get(parser.lastParse) ?? 0) + 1);
      }
      // Most answers were parsed in part only.
      assert.ok((kinds.get('partial') ?? 0) > 250, JSON.stringify([...kinds]));
    });
  }

  it('unchanged entries stay the same objects; an unchanged answer is recognised', () => {
    const parser = new NodeAnswerParser();
    const entries = Array.from({ length: 5 }, (_, i) => entry(`s${i}`, 80 + i, i + 1));
    const first = parser.parse(answer('n', '10.0.0.1', entries, false)).services;
    entries.splice(2, 1, entry('s2', 99, 50));
    const second = parser.parse(answer('n', '10.0.0.1', entries, false));
    assert.equal(parser.lastParse, 'partial');
    assert.equal(second.services[0], first[0]);
    assert.equal(second.services[4], first[4]);
    assert.notEqual(second.services[2], first[2]);
    assert.equal(parser.parse(answer('n', '10.0.0.1', entries, false)).unchanged, true);
  });

  it('a node Consul does not know', () => {
    const parser = new NodeAnswerParser();
    parser.parse(answer('n', '10.0.0.1', [entry('s', 80, 1)], false));
    assert.deepEqual(parser.parse('{"Node":null,"Services":null}'), { node: null, services: [], unchanged: false });
  });
});
