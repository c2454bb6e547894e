import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DfpError } from '../../src/errors.js';
import { spec } from '../../src/spec/defaults.js';
import { backendName, routedSpec, type ServiceSpec } from '../../src/spec/types.js';
import { type DesiredState, EMPTY_STATE, withoutService, withoutServices, withService, withServices } from '../../src/state/desired-state.js';

/**
 * withService checks a spec against an index of the others' aclNames, TCP ports and backend names
 * (carried from state to state). Held against a brute-force walk over every other service, over
 * random adds, replacements and removals built to collide.
 */

/** Every reason a walk over the other services finds to refuse the spec (empty: accepted). */
function bruteForce(state: DesiredState, s: ServiceSpec): Set<string> {
  const out = new Set<string>();
  const mine = new Set(routedSpec(s).destinations.map((d) => backendName(s, d)));
  for (const other of state.services.values()) {
    if (other.serviceName === s.serviceName) continue;
    if (other.aclName === s.aclName) out.add('aclName');
    for (const d of other.destinations) {
      if (d.reqMode === 'http' || d.srcPort === undefined) continue;
      for (const m of s.destinations) {
        if (m.reqMode === 'http' || m.srcPort !== d.srcPort) continue;
        if (m.reqMode === 'tcp' || d.reqMode === 'tcp') out.add('srcPort');
        else if (m.serviceDomain.some((x) => d.serviceDomain.includes(x))) out.add('serviceDomain');
      }
    }
    for (const d of routedSpec(other).destinations) if (mine.has(backendName(other, d))) out.add('aclName');
  }
  return out;
}

function random(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

describe('withService against the name index', () => {
  it('refuses exactly what a walk over every other service refuses', () => {
    const rand = random(7);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    let state = EMPTY_STATE;
    let refused = 0;
    let accepted = 0;
    for (let round = 0; round < 3000; round++) {
      const name = pick(['a', 'b', 'c', 'd', 'web', 'https-web', 'db']);
      if (rand() < 0.15) {
        state = withoutService(state, name);
        continue;
      }
      const acl = rand() < 0.3 ? pick(['a', 'web', 'https-web', 'x']) : name;
      const kind = rand();
      const s =
        kind < 0.5
          ? spec({ serviceName: name, aclName: acl, destinations: [{ servicePath: ['/p'], port: pick([80, 443, undefined]), ...(rand() < 0.3 ? { httpsPort: 443 } : {}) }] })
          : spec({
              serviceName: name,
              aclName: acl,
              destinations: [
                kind < 0.75
                  ? { reqMode: 'tcp' as const, servicePath: [], srcPort: pick([5432, 6379]), port: 5432 }
                  : { reqMode: 'sni' as const, servicePath: [], srcPort: 8443, serviceDomain: [pick(['a.com', 'b.com', '*.c.com'])] },
              ],
            });
      const expected = bruteForce(state, s);
      try {
        state = withService(state, s, []);
        accepted++;
        assert.equal(expected.size, 0, `round ${round}: accepted ${name} (${acl}), the walk refuses it on ${[...expected].join(', ')}`);
      } catch (err) {
        if (err instanceof assert.AssertionError) throw err;
        refused++;
        assert.ok(err instanceof DfpError, String(err));
        assert.ok(expected.has(err.parameter ?? ''), `round ${round}: ${name} (${acl}): ${err.message}; the walk finds ${[...expected].join(', ') || 'nothing'}`);
      }
    }
    assert.ok(refused > 300 && accepted > 300, `${refused} refused, ${accepted} accepted`);
  });

  it('withServices and withoutServices (one copy per batch) end where one withService or withoutService at a time ends', () => {
    const rand = random(11);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T;
    const names = ['a', 'b', 'c', 'd', 'web', 'https-web', 'db', 'e', 'f'];
    const make = (name: string): ServiceSpec => {
      const acl = rand() < 0.3 ? pick(['a', 'web', 'https-web', 'x']) : name;
      return rand() < 0.6
        ? spec({ serviceName: name, aclName: acl, destinations: [{ servicePath: ['/p'], ...(rand() < 0.3 ? { httpsPort: 443 } : {}) }], ...(rand() < 0.2 ? { serviceColor: 'blue' } : {}) })
        : spec({ serviceName: name, aclName: acl, destinations: [{ reqMode: 'tcp' as const, servicePath: [], srcPort: pick([5432, 6379]), port: 5432 }] });
    };
    let batched: DesiredState = EMPTY_STATE;
    let single: DesiredState = EMPTY_STATE;
    let refusals = 0;
    for (let round = 0; round < 400; round++) {
      const gone = names.filter(() => rand() < 0.15);
      const entries = Array.from({ length: 1 + Math.floor(rand() * 5) }, () => ({ spec: make(pick(names)), instances: rand() < 0.5 ? [{ id: `i${round}`, address: '10.0.0.1', port: 80 }] : undefined }));
      const refusedBatch: string[] = [];
      batched = withServices(withoutServices(batched, gone), entries, (sp) => refusedBatch.push(sp.serviceName));
      const refusedSingle: string[] = [];
      single = entries.reduce((state, { spec: sp, instances }) => {
        try {
          return withService(state, sp, instances ?? state.instances.get(sp.serviceColor ? `${sp.serviceName}-${sp.serviceColor}` : sp.serviceName) ?? []);
        } catch {
          refusedSingle.push(sp.serviceName);
          return state;
        }
      }, gone.reduce(withoutService, single));
      refusals += refusedSingle.length;
      assert.deepEqual(refusedBatch, refusedSingle, `round ${round}: refused`);
      assert.deepEqual([...batched.services].sort(), [...single.services].sort(), `round ${round}: services`);
      assert.deepEqual([...batched.instances].sort(), [...single.instances].sort(), `round ${round}: instances`);
    }
    assert.ok(refusals > 50, `${refusals} refusals`);
  });
});
