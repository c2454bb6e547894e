import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { canonicalAllocation, runtimeAllocation, runtimeOps } from '../../src/apply/plan.js';
import { type BackendAllocation, renderConfig } from '../../src/render/haproxy-config.js';
import { assignSlots, slotCount } from '../../src/render/slots.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

const SETTINGS = defaultRenderSettings({ listeners: [{ port: 80, ssl: false, options: '' }], adminSocket: '/run/admin.sock' });

const inst = (n: number) => ({ id: `h:web.${n}`, address: '10.0.0.1', port: 31000 + n });
const web = (...ns: number[]): ServiceState => ({ spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/web'] }] }), instances: ns.map(inst) });

function step(before: BackendAllocation, services: ServiceState[]) {
  const next = runtimeAllocation(before, services, 4);
  assert.notEqual(typeof next, 'string', String(next));
  return next as BackendAllocation;
}

describe('server slots', () => {
  it('room for every instance plus one, at least the minimum, in powers of two', () => {
    assert.deepEqual([0, 1, 2, 3, 4, 7, 8, 100].map((n) => slotCount(n, 4)), [4, 4, 4, 4, 8, 8, 16, 128]);
    assert.equal(slotCount(0, 1), 1);
  });

  it('holders keep their slots; newcomers take the lowest free ones in ID order', () => {
    const t1 = assignSlots(undefined, ['b', 'a'], 4, true);
    assert.deepEqual(t1, ['a', 'b', undefined, undefined]);
    const t2 = assignSlots(t1, ['b', 'd', 'c'], 4, false);
    assert.deepEqual(t2, ['c', 'b', 'd', undefined], 'a left: c takes its slot, b stays');
    assert.equal(assignSlots(t2, ['a', 'b', 'c', 'd', 'e'], 4, false), undefined, 'full without growing');
    assert.deepEqual(assignSlots(t2, ['a', 'b', 'c', 'd', 'e'], 4, true), ['c', 'b', 'd', 'a', 'e', undefined, undefined, undefined]);
  });

  it('a table four times larger than needed shrinks at a reload, holders past the end move down', () => {
    const big = Array.from({ length: 16 }, (_, i) => (i === 13 ? 'x' : i === 1 ? 'y' : undefined));
    assert.deepEqual(assignSlots(big, ['x', 'y'], 4, true), ['x', 'y', undefined, undefined]);
    assert.equal(assignSlots(big, ['x', 'y'], 4, false)?.length, 16, 'never shrinks at run time');
  });

  it('a scale event is slot commands only: fill, re-point, free; never add or del server', () => {
    const a0 = canonicalAllocation([web(1)], 2, 4);
    const r0 = renderConfig(SETTINGS, [web(1)], a0);
    assert.match(r0.config, /^ {4}server s1 10\.0\.0\.1:31001 check {2}# h:web\.1\n {4}server s2 0\.0\.0\.0:0 disabled check$/m);
    const a1 = step(a0, [web(1, 2)]);
    const r1 = renderConfig(SETTINGS, [web(1, 2)], a1);
    assert.deepEqual(runtimeOps(r0, r1), [{ kind: 'fill-slot', backend: 'web-be_0', slot: 's2', address: '10.0.0.1', port: 31002 }]);
    const a2 = step(a1, [web(2)]);
    const r2 = renderConfig(SETTINGS, [web(2)], a2);
    assert.deepEqual(runtimeOps(r1, r2), [{ kind: 'free-slot', backend: 'web-be_0', slot: 's1' }]);
    const a3 = step(a2, [web(2, 3)]);
    assert.deepEqual(runtimeOps(r2, renderConfig(SETTINGS, [web(2, 3)], a3)), [{ kind: 'fill-slot', backend: 'web-be_0', slot: 's1', address: '10.0.0.1', port: 31003 }], 'the freed slot is reused');
  });

  it('an instance replaced by another on the same address keeps the slot: no command, but the config names the new one', () => {
    const a0 = canonicalAllocation([web(1)], 2, 4);
    const r0 = renderConfig(SETTINGS, [web(1)], a0);
    const replaced: ServiceState = { spec: web(1).spec, instances: [{ id: 'h:web.new', address: '10.0.0.1', port: 31001 }] };
    const r1 = renderConfig(SETTINGS, [replaced], step(a0, [replaced]));
    assert.deepEqual(runtimeOps(r0, r1), []);
    assert.match(r1.config, /server s1 10\.0\.0\.1:31001 check {2}# h:web\.new$/m, 'so the applier writes the files although no command is sent');
  });

  it('a backend out of slots needs a reload that grows it, keeping holders in place', () => {
    const a0 = canonicalAllocation([web(1, 2, 3)], 2, 4);
    const a1 = step(a0, [web(1, 2, 3, 4)]);
    assert.equal(runtimeAllocation(a1, [web(1, 2, 3, 4, 5)], 4), 'backend web-be_0 (5 instances, 4 server slots)');
    const grown = canonicalAllocation([web(1, 2, 3, 4, 5)], 2, 4, a1);
    assert.deepEqual(grown.slots.get('web-be_0'), ['h:web.1', 'h:web.2', 'h:web.3', 'h:web.4', 'h:web.5', undefined, undefined, undefined]);
  });

  it('a new service takes a spare backend and its free slots, without a reload', () => {
    const other: ServiceState = { spec: spec({ serviceName: 'api', destinations: [{ servicePath: ['/api'] }] }), instances: [{ id: 'h:api.1', address: '10.0.0.2', port: 80 }] };
    const a0 = canonicalAllocation([web(1)], 2, 4);
    const r0 = renderConfig(SETTINGS, [web(1)], a0);
    const a1 = step(a0, [web(1), other]);
    const r1 = renderConfig(SETTINGS, [web(1), other], a1);
    const ops = runtimeOps(r0, r1);
    assert.ok(ops, 'runtime only');
    assert.deepEqual(
      ops.filter((o) => o.kind === 'fill-slot'),
      [{ kind: 'fill-slot', backend: 'dfp-spare-1', slot: 's1', address: '10.0.0.2', port: 80 }],
    );
  });

  it('sticky services keep one cookie per slot, so scaling them needs no reload either', () => {
    const sticky = (...ns: number[]): ServiceState => ({ spec: { ...web().spec, sessionType: 'sticky-server' }, instances: ns.map(inst) });
    const a0 = canonicalAllocation([sticky(1)], 2, 4);
    const r0 = renderConfig(SETTINGS, [sticky(1)], a0);
    assert.match(r0.config, /server s2 0\.0\.0\.0:0 disabled check cookie s2$/m);
    const r1 = renderConfig(SETTINGS, [sticky(1, 2)], step(a0, [sticky(1, 2)]));
    assert.deepEqual(runtimeOps(r0, r1)?.map((o) => o.kind), ['fill-slot']);
  });
});
