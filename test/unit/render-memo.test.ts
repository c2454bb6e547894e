import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalAllocation, runtimeAllocation } from '../../src/apply/plan.js';
import type { BackendAllocation } from '../../src/render/haproxy-config.js';
import { renderConfig } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

const SETTINGS = defaultRenderSettings({ listeners: [{ port: 80, ssl: false, options: '' }], adminSocket: '/run/admin.sock', users: ['ops:pw'] });

/** A small deterministic generator, so a failure names a seed that reproduces it. */
function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

function makeService(i: number, variant: number, instances: number): ServiceState {
  return {
    spec: spec({
      serviceName: `svc${i}`,
      ...(variant % 3 === 1 ? { users: ['a:b'] } : {}),
      ...(variant % 4 === 2 ? { sessionType: 'sticky-server' as const } : {}),
      destinations: [
        { servicePath: [`/s${i}`, ...(variant % 2 ? [`/v${variant}`] : [])], serviceDomain: variant % 5 === 0 ? [`s${i}.example.com`] : [] },
        ...(variant % 3 === 2 ? [{ servicePath: [`/api${i}`], port: 8080, index: 1 }] : []),
      ],
    }),
    instances: Array.from({ length: instances }, (_, k) => ({ id: `h:svc${i}.${k}`, address: `10.0.${i % 250}.${k + 1}`, port: 30000 + k })),
  };
}

/** The same services as brand-new objects: nothing memoised on the originals can be reused. */
function copies(services: readonly ServiceState[]): ServiceState[] {
  return services.map((s) => structuredClone(s));
}

describe('rendering memoises per service and splices: always the same text as a render from scratch', () => {
  for (const seed of [1, 2, 3]) {
    it(`60 random changes (seed ${seed})`, () => {
      const random = rng(seed);
      let services = Array.from({ length: 12 }, (_, i) => makeService(i, i, 1 + (i % 3)));
      let allocation: BackendAllocation = canonicalAllocation(services, 4, 4);
      for (let step = 0; step < 60; step++) {
        const i = Math.floor(random() * 16);
        const roll = random();
        const at = services.findIndex((s) => s.spec.serviceName === `svc${i}`);
        if (roll < 0.2 && at >= 0) services = services.filter((_, k) => k !== at);
        else if (roll < 0.6 && at >= 0) {
          const s = services[at] as ServiceState;
          // A scale event: the same spec object, a new instance list.
          services = services.map((x, k) => (k === at ? { spec: s.spec, instances: makeService(i, 0, Math.floor(random() * 6)).instances } : x));
        } else {
          const fresh = makeService(i, Math.floor(random() * 10), Math.floor(random() * 4));
          services = at >= 0 ? services.map((x, k) => (k === at ? fresh : x)) : [...services, fresh];
        }
        const next = runtimeAllocation(allocation, services, 4);
        allocation = typeof next === 'string' ? canonicalAllocation(services, 4, 4, allocation) : next;
        const memoised = renderConfig(SETTINGS, services, allocation);
        const scratch = renderConfig(SETTINGS, copies(services), allocation);
        assert.equal(memoised.config, scratch.config, `step ${step}`);
        assert.equal(memoised.skeleton, scratch.skeleton, `step ${step}`);
        assert.deepEqual(memoised.maps, scratch.maps, `step ${step}`);
        assert.equal(memoised.secrets, scratch.secrets, `step ${step}`);
      }
    });
  }
});
