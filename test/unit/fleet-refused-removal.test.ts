import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Reconciler } from '../../src/apply/reconciler.js';
import type { LogEntry } from '../../src/consul/change-log.js';
import type { ConsulSpecStore } from '../../src/consul/spec-store.js';
import { ConfigRejectedError } from '../../src/errors.js';
import { Fleet } from '../../src/fleet.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceSpec } from '../../src/spec/types.js';
import { type DesiredState, EMPTY_STATE } from '../../src/state/desired-state.js';
import { createLogger } from '../../src/util/log.js';

/**
 * A spec HAProxy refused here for lack of room is tried again when a removal frees it, also when
 * the removal comes from the change log (which names only the removed service): review finding,
 * the log path compares only the services it names. HAProxy's refusal is a stand-in (room for one
 * of `old` and `big`); the fleet's own logic is real.
 */
it('a removal from the change log brings back the spec refused for lack of room', async () => {
  const old = spec({ serviceName: 'old', destinations: [{ servicePath: ['/old'] }] });
  const big = spec({ serviceName: 'big', destinations: [{ servicePath: ['/big'] }] });
  const ctrl = new AbortController();
  let reads = 0;
  const removal: LogEntry = { key: 'p/_dfp/changes/other/0', writer: 'other', slot: 0, modifyIndex: 7, service: 'old', cert: undefined, prev: 0, at: 0 };
  const store = {
    writer: 'self',
    async changes(_index: number, _wait: number, signal?: AbortSignal) {
      reads++;
      if (reads === 1) return { log: [], index: 5 };
      if (reads === 2) return { log: [removal], index: 7 };
      await new Promise((resolve) => (signal ?? ctrl.signal).addEventListener('abort', resolve));
      throw new Error('stopped');
    },
    async list() {
      return { specs: new Map<string, ServiceSpec>([['old', old], ['big', big]]), index: 5, invalid: [], hash: 'both' };
    },
    async legacy() {
      return [];
    },
    async refresh(names: Iterable<string>) {
      return new Map([...names].map((n) => [n, undefined]));
    },
    invalidKeys: () => [],
  } as unknown as ConsulSpecStore;
  let state: DesiredState = EMPTY_STATE;
  const reconciler = {
    snapshot: () => state,
    submit: async (trigger: string, change: (s: DesiredState) => DesiredState) => {
      const next = change(state);
      if (next.services.has('old') && next.services.has('big')) throw new ConfigRejectedError(`no room for both (${trigger})`, false);
      state = next;
      return { generation: 1, kind: 'reload', trigger, durationMs: 0, hash: '', at: '' };
    },
  } as unknown as Reconciler;
  const fleet = new Fleet(store, reconciler, { instances: async () => [] }, 'p/', {} as never, () => undefined, createLogger('error'), 1);
  await fleet.restore();
  assert.deepEqual([...state.services.keys()].sort(), ['old'], 'the restore applied old and refused big');
  fleet.startWatching();
  for (let i = 0; i < 100 && !state.services.has('big'); i++) await new Promise((r) => setTimeout(r, 5));
  await fleet.stop();
  assert.deepEqual([...state.services.keys()].sort(), ['big'], 'old removed, and big, refused before, applied with the room it freed');
});
