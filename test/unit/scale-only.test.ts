import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalAllocation, deltaOps, runtimeAllocation, runtimeOps, scaleOnlyOps } from '../../src/apply/plan.js';
import type { Instance } from '../../src/discovery/types.js';
import { type BackendAllocation, MAP_NAMES, type MapName, patchConfig, type RenderedConfig, renderConfig, runtimeAddition } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

/**
 * Issue 9, work per change proportional to the change: a scale event's commands come from the
 * changed services alone (scaleOnlyOps). They must be exactly the commands the general path finds
 * by rendering both configs and comparing them, and the files rendered afterwards must be the same.
 */

const SETTINGS = defaultRenderSettings();
const MIN_SLOTS = SETTINGS.serverSlots;

/** A small deterministic generator, so a failure replays. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return x / 2147483648;
  };
}

function instances(rand: () => number, service: number, count: number): Instance[] {
  return Array.from({ length: count }, (_, i) => ({ id: `host:${service}.${i}:80`, address: `127.0.0.${1 + Math.floor(rand() * 3)}`, port: 10000 + service * 10 + i }));
}

const byName = (services: readonly ServiceState[]) => new Map(services.map((s) => [s.spec.serviceName, s]));

/** patchConfig's files equal renderConfig's, part by part (what the applier writes and compares). */
function assertSameRender(patched: RenderedConfig | undefined, full: RenderedConfig, what: string): asserts patched is RenderedConfig {
  assert.ok(patched, `${what}: patchConfig gave up`);
  assert.equal(patched.config, full.config, `${what}: haproxy.cfg`);
  assert.equal(patched.skeleton, full.skeleton, `${what}: skeleton`);
  for (const m of MAP_NAMES) assert.equal(patched.maps[m], full.maps[m], `${what}: ${m}`);
  assert.equal(patched.secrets, full.secrets, `${what}: secrets`);
  assert.deepEqual(patched.lookups, full.lookups, `${what}: lookups`);
  assert.deepEqual(patched.conflicts, full.conflicts, `${what}: conflicts`);
  assert.deepEqual([...patched.backends.keys()].sort(), [...full.backends.keys()].sort(), `${what}: backends`);
  for (const [name, b] of full.backends) assert.equal(JSON.stringify(patched.backends.get(name)), JSON.stringify(b), `${what}: backend ${name}`);
  assert.deepEqual(patched.sectionNames, full.sectionNames, `${what}: section order`);
}
const sorted = (ops: readonly unknown[]) => ops.map((o) => JSON.stringify(o)).sort();

describe('scale events without rendering (plan.ts scaleOnlyOps)', () => {
  it('gives the very commands and files of the general path, over random scale events', () => {
    const rand = random(42);
    const specs = Array.from({ length: 30 }, (_, i) =>
      spec({ serviceName: `svc${i}`, destinations: i % 7 === 0 ? [{ servicePath: [`/a${i}`], port: 80 }, { servicePath: [`/b${i}`], port: 81 }] : [{ servicePath: [`/s${i}`] }] }),
    );
    let services: ServiceState[] = specs.map((s, i) => ({ spec: s, instances: instances(rand, i, 1 + (i % 3)) }));
    let allocation = canonicalAllocation(services, 16, MIN_SLOTS);
    let live = renderConfig(SETTINGS, services, allocation);
    let quickCount = 0;
    let fallbacks = 0;
    for (let round = 0; round < 200; round++) {
      const next = services.map((s, i) => {
        if (rand() > 0.15) return s;
        const list = [...s.instances];
        const what = rand();
        if (what < 0.35 && list.length > 0) list.splice(Math.floor(rand() * list.length), 1);
        else if (what < 0.7) list.push({ id: `host:${i}.r${round}:80`, address: '127.0.0.9', port: 20000 + round });
        else if (list.length > 0) {
          const k = Math.floor(rand() * list.length);
          const moved = list[k] as Instance;
          list[k] = { ...moved, port: moved.port + 1 }; // same ID, new address: a moved instance
        }
        return { spec: s.spec, instances: list };
      });
      const quick = scaleOnlyOps(byName(services), next, allocation, MIN_SLOTS);
      const fresh = runtimeAllocation(allocation, next, MIN_SLOTS);
      if (quick === undefined) {
        // Only when the slots do not hold the change: the general path needs a reload too.
        fallbacks++;
        assert.equal(typeof fresh, 'string', `round ${round}: scaleOnlyOps gave up on a change the runtime API can make`);
        allocation = canonicalAllocation(next, 16, MIN_SLOTS, allocation);
        live = renderConfig(SETTINGS, next, allocation);
        services = next;
        continue;
      }
      quickCount++;
      assert.notEqual(typeof fresh, 'string', `round ${round}`);
      if (typeof fresh === 'string') continue;
      const rendered = renderConfig(SETTINGS, next, { ...fresh, lookups: live.lookups });
      const general = runtimeOps(live, rendered);
      assert.ok(general, `round ${round}: the general path wants a reload`);
      assert.deepEqual(sorted(quick.ops), sorted(general ?? []), `round ${round}`);
      assert.deepEqual([...quick.allocation.slots], [...fresh.slots], `round ${round}: slot tables`);
      const materialized = renderConfig(SETTINGS, next, quick.allocation);
      assert.equal(materialized.config, rendered.config, `round ${round}: files`);
      // The files written after scale events render only the touched backends (ConfigApplier.materialize).
      const patched = patchConfig(SETTINGS, live, byName(next), quick.touched, quick.allocation, live.tables);
      assertSameRender(patched, materialized, `round ${round}`);
      services = next;
      allocation = quick.allocation;
      live = patched;
    }
    assert.ok(quickCount > 150, `${quickCount} scale-only plans, ${fallbacks} fallbacks`);
  });

  it('anything but instance lists takes the general path', () => {
    const a = spec({ serviceName: 'a', destinations: [{ servicePath: ['/a'] }] });
    const b = spec({ serviceName: 'b', destinations: [{ servicePath: ['/b'] }] });
    const one: Instance[] = [{ id: 'i1', address: '127.0.0.1', port: 1 }];
    const services: ServiceState[] = [
      { spec: a, instances: one },
      { spec: b, instances: one },
    ];
    const allocation = canonicalAllocation(services, 16, MIN_SLOTS);
    const before = byName(services);
    // A changed spec (even an equal copy), a new service, a removed one.
    assert.equal(scaleOnlyOps(before, [{ spec: { ...a }, instances: one }, services[1] as ServiceState], allocation, MIN_SLOTS), undefined);
    assert.equal(scaleOnlyOps(before, [...services, { spec: spec({ serviceName: 'c', destinations: [{ servicePath: ['/c'] }] }), instances: [] }], allocation, MIN_SLOTS), undefined);
    assert.equal(scaleOnlyOps(before, [services[0] as ServiceState], allocation, MIN_SLOTS), undefined);
    // A name listed twice (one of before's in place of another, or added twice).
    assert.equal(scaleOnlyOps(before, [services[0] as ServiceState, services[0] as ServiceState], allocation, MIN_SLOTS), undefined);
    const c = { spec: spec({ serviceName: 'c', destinations: [{ servicePath: ['/c'] }] }), instances: [] };
    const context = { add: () => ({ entries: [], lookups: [] }), tables: Object.fromEntries(MAP_NAMES.map((m) => [m, new Map()])) as Record<MapName, Map<string, string>>, lookups: new Set<string>() };
    assert.equal(deltaOps(before, [...services, c, c], allocation, MIN_SLOTS, context), undefined);
    // A sticky service keeps the general path.
    const sticky = spec({ serviceName: 's', sessionType: 'sticky-server', destinations: [{ servicePath: ['/s'] }] });
    const withSticky: ServiceState[] = [{ spec: sticky, instances: one }];
    assert.equal(scaleOnlyOps(byName(withSticky), [{ spec: sticky, instances: [...one, { id: 'i2', address: '127.0.0.2', port: 2 }] }], canonicalAllocation(withSticky, 16, MIN_SLOTS), MIN_SLOTS), undefined);
    // Nothing moved: no command, the same allocation.
    const same = scaleOnlyOps(before, services, allocation, MIN_SLOTS);
    assert.deepEqual(same?.ops, []);
    assert.equal(same?.allocation, allocation);
  });

  it('new services too: the same commands, allocation and files as the general path, or the general path', () => {
    const rand = random(1234);
    let services: ServiceState[] = Array.from({ length: 12 }, (_, i) => ({
      spec: spec({ serviceName: `svc${i}`, destinations: [{ servicePath: [`/s${i}`], ...(i % 4 === 0 ? { serviceDomain: [`s${i}.com`] } : {}) }] }),
      instances: instances(rand, i, 1 + (i % 3)),
    }));
    let allocation: BackendAllocation = canonicalAllocation(services, 16, MIN_SLOTS);
    let live: RenderedConfig = renderConfig(SETTINGS, services, allocation);
    let viaDelta = 0;
    let addedViaDelta = 0;
    let general = 0;
    let deltasOverConflicts = 0;
    for (let round = 0; round < 150; round++) {
      const next = services.map((s, i) => (rand() < 0.1 ? { spec: s.spec, instances: instances(rand, i + round * 100, 1 + Math.floor(rand() * 3)) } : s));
      const adds = Math.floor(rand() * 3);
      for (let k = 0; k < adds; k++) {
        const n = `new${round}-${k}`;
        const kind = rand();
        const dest =
          kind < 0.55
            ? { servicePath: [`/${n}`] }
            : kind < 0.7
              ? { servicePath: ['/s1'] } // a path another service holds
              : kind < 0.8
                ? { servicePath: [`/${n}`], serviceDomain: [`${n}.com`] }
                : kind < 0.9
                  ? { servicePath: [`^/${n}$`], pathType: 'path_reg' as const }
                  : { servicePath: [`/${n}`, `/${n}-b`], servicePathExclude: [`/${n}/x`] };
        next.push({ spec: spec({ serviceName: n, destinations: [dest] }), instances: instances(rand, 5000 + round * 10 + k, 1 + Math.floor(rand() * 2)) });
      }
      const delta = deltaOps(byName(services), next, allocation, MIN_SLOTS, {
        add: (sp, nameOf, slotsOf) => runtimeAddition(SETTINGS, sp, nameOf, slotsOf),
        tables: live.tables,
        lookups: new Set(live.lookups),
      });
      const fresh = runtimeAllocation(allocation, next, MIN_SLOTS);
      const rendered = typeof fresh === 'string' ? undefined : renderConfig(SETTINGS, next, { ...fresh, lookups: live.lookups });
      const ops = rendered ? runtimeOps(live, rendered) : undefined;
      if (delta !== undefined) {
        viaDelta++;
        addedViaDelta += next.length - services.length;
        assert.ok(rendered && ops && typeof fresh !== 'string', `round ${round}: the delta went where the general path reloads`);
        assert.deepEqual(sorted(delta.ops), sorted(ops ?? []), `round ${round}: commands`);
        assert.deepEqual([...delta.allocation.names], [...(fresh as BackendAllocation).names], `round ${round}: names`);
        assert.deepEqual(delta.allocation.spares, (fresh as BackendAllocation).spares, `round ${round}: spares`);
        assert.deepEqual([...delta.allocation.slots], [...(fresh as BackendAllocation).slots], `round ${round}: slots`);
        const materialized = renderConfig(SETTINGS, next, { ...delta.allocation, lookups: live.lookups });
        assert.equal(materialized.config, rendered?.config, `round ${round}: haproxy.cfg`);
        for (const m of MAP_NAMES) assert.equal(materialized.maps[m], rendered?.maps[m], `round ${round}: ${m}`);
        // The tables the applier carries forward: the live ones plus the delta's entries.
        for (const m of MAP_NAMES) {
          const carried = new Map(live.tables[m]);
          for (const e of delta.entries) if (e.map === m) carried.set(e.key, e.value);
          assert.deepEqual([...carried].sort(), [...(rendered as RenderedConfig).tables[m]].sort(), `round ${round}: table ${m}`);
        }
        // ConfigApplier.liveConflicts reads the last render's conflicts while files lag behind deltas.
        assert.deepEqual(materialized.conflicts, live.conflicts, `round ${round}: a delta changed the route conflicts`);
        if (live.conflicts.length > 0) deltasOverConflicts++;
        // Patched from the live files and the carried tables, as ConfigApplier.materialize does.
        const carried = { ...live.tables } as Record<MapName, ReadonlyMap<string, string>>;
        for (const e of delta.entries) carried[e.map] = new Map([...carried[e.map], [e.key, e.value]]);
        const patched = patchConfig(SETTINGS, live, byName(next), delta.touched, { ...delta.allocation, lookups: live.lookups }, carried);
        assertSameRender(patched, materialized, `round ${round}`);
        allocation = { ...delta.allocation, lookups: live.lookups };
        live = patched;
      } else {
        general++;
        if (rendered && ops && typeof fresh !== 'string') {
          allocation = { ...fresh, lookups: live.lookups };
          live = rendered;
        } else {
          allocation = canonicalAllocation(next, 16, MIN_SLOTS, allocation);
          live = renderConfig(SETTINGS, next, allocation);
        }
      }
      services = next;
    }
    assert.ok(viaDelta > 60 && general > 20 && addedViaDelta > 40, `${viaDelta} through the delta (${addedViaDelta} new services), ${general} through the general path`);
    assert.ok(deltasOverConflicts > 10, `only ${deltasOverConflicts} deltas applied while a route conflict was live`);
  });
});

