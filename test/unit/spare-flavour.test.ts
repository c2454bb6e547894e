import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalAllocation, runtimeAllocation, runtimeOps, spareChecks } from '../../src/apply/plan.js';
import { fdNeed } from '../../src/haproxy/fd-budget.js';
import { renderConfig, runtimeAddition } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceSpec } from '../../src/spec/types.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

/**
 * Regression (found routing 10,000 `skipCheck` services in the bench): spares always carried
 * `check`, so a `skipCheck` service never matched one, and every new service of a `skipCheck`
 * fleet cost a reload (338 reloads, 0 runtime applies for the first 1,200). Spares now follow what
 * most services use.
 */

const SETTINGS = defaultRenderSettings();
const MIN_SLOTS = SETTINGS.serverSlots;

const service = (name: string, skipCheck: boolean, extra: Partial<ServiceSpec> = {}): ServiceState => ({
  spec: spec({ serviceName: name, skipCheck, ...extra, destinations: [{ servicePath: [`/${name}/`] }] }),
  instances: [{ id: `host:${name}.0:80`, address: '127.0.0.1', port: 10_000 }],
});

describe('spare backends follow the services (skipCheck)', () => {
  it('take checks as most HTTP backends do; ties and an empty config keep checks', () => {
    assert.equal(spareChecks([]), true);
    assert.equal(spareChecks([service('a', true)]), false);
    assert.equal(spareChecks([service('a', true), service('b', false)]), true);
    assert.equal(spareChecks([service('a', true), service('b', true), service('c', false)]), false);
    // A TCP service has no spare to match: it does not count.
    const tcp: ServiceState = {
      spec: spec({ serviceName: 't', skipCheck: false, destinations: [{ servicePath: [], reqMode: 'tcp', srcPort: 6379, port: 6379 }] }),
      instances: [],
    };
    assert.equal(spareChecks([service('a', true), tcp]), false);
  });

  for (const fleetSkips of [true, false]) {
    it(`a new service like the ${fleetSkips ? 'skipCheck' : 'checked'} fleet goes live on a spare without a reload; one unlike it needs a reload`, () => {
      const services = Array.from({ length: 10 }, (_, i) => service(`s${i}`, fleetSkips));
      const allocation = canonicalAllocation(services, 16, MIN_SLOTS);
      assert.equal(allocation.spareChecks, !fleetSkips);
      const live = renderConfig(SETTINGS, services, allocation);
      for (const [newSkips, fast] of [
        [fleetSkips, true],
        [!fleetSkips, false],
      ] as const) {
        const next = [...services, service('new', newSkips)];
        const fresh = runtimeAllocation(allocation, next, MIN_SLOTS);
        assert.notEqual(typeof fresh, 'string');
        if (typeof fresh === 'string') return;
        assert.equal(fresh.spareChecks, allocation.spareChecks, 'runtime changes keep the spares as they are');
        const ops = runtimeOps(live, renderConfig(SETTINGS, next, { ...fresh, lookups: live.lookups }));
        assert.equal(ops !== undefined, fast, `skipCheck=${newSkips} on a fleet with skipCheck=${fleetSkips}`);
        const name = fresh.names.get('new-be_0') ?? '';
        assert.ok(name.startsWith('dfp-spare-'), name);
        const quick = runtimeAddition(SETTINGS, (next.at(-1) as ServiceState).spec, () => name, () => MIN_SLOTS, allocation.spareChecks);
        assert.equal(quick !== undefined, fast, 'the quick path agrees with the general one');
      }
    });
  }

  it('spares without checks need no file descriptors of their own', () => {
    const skipping = Array.from({ length: 40 }, (_, i) => service(`s${i}`, true));
    const rendered = renderConfig(SETTINGS, skipping, canonicalAllocation(skipping, 16, MIN_SLOTS));
    assert.equal(fdNeed(rendered, 100).checked, 0);
    const checking = Array.from({ length: 40 }, (_, i) => service(`s${i}`, false));
    const withChecks = renderConfig(SETTINGS, checking, canonicalAllocation(checking, 16, MIN_SLOTS));
    // 40 services and 16 spares (at least SPARE_BACKENDS, a quarter of the services), MIN_SLOTS each.
    assert.equal(fdNeed(withChecks, 100).checked, (40 + 16) * MIN_SLOTS);
  });
});
