import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PrecheckBatch } from '../../src/apply/precheck-batch.js';
import { ConfigRejectedError, InvalidParamError } from '../../src/errors.js';
import { spec } from '../../src/spec/defaults.js';
import { type DesiredState, EMPTY_STATE, withService } from '../../src/state/desired-state.js';

/**
 * A stand-in for the applier: refuses any state holding a service named `bad*`, and records what it
 * checked. A state whose services all start with `rt` goes out at run time: no check needed.
 */
function checker() {
  const seen: string[][] = [];
  const check = {
    needsCheck: (state: DesiredState) => ![...state.services.keys()].every((n) => n.startsWith('rt')),
    check: async (state: DesiredState) => {
      const names = [...state.services.keys()].sort();
      seen.push(names);
      await new Promise((r) => setTimeout(r, 20));
      const bad = names.filter((n) => n.startsWith('bad'));
      if (bad.length > 0) throw new ConfigRejectedError(`[ALERT] backend ${bad.join(', ')} is refused`, false);
    },
  };
  return { seen, check };
}

const adding = (name: string, aclName = name) => (s: DesiredState) => withService(s, spec({ serviceName: name, aclName, destinations: [{ servicePath: [`/${name}`] }] }), []);

const outcome = (p: Promise<void>) =>
  p.then(
    () => 'ok',
    (e: unknown) => (e as Error).constructor.name,
  );

describe('PrecheckBatch: one haproxy -c per burst of API changes', () => {
  it('changes arriving while a check runs are checked together, on the state with all of them', async () => {
    const { seen, check } = checker();
    const batch = new PrecheckBatch(() => EMPTY_STATE, check);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => outcome(batch.run(adding(`s${i}`)))));
    assert.deepEqual(results, Array(10).fill('ok'));
    // The first runs alone (nothing to wait for); the nine that queued behind it go in one check.
    assert.deepEqual(
      seen.map((names) => names.length),
      [1, 9],
    );
    assert.equal(batch.checks, 2);
  });

  it('a batch HAProxy refuses is split in halves until the bad change is alone: only it fails', async () => {
    const { seen, check } = checker();
    const batch = new PrecheckBatch(() => EMPTY_STATE, check);
    const first = outcome(batch.run(adding('s0')));
    const rest = ['s1', 'bad2', 's3', 's4'].map((n) => outcome(batch.run(adding(n))));
    assert.deepEqual(await Promise.all([first, ...rest]), ['ok', 'ok', 'ConfigRejectedError', 'ok', 'ok']);
    // s0 alone; the four together (refused); [s1, bad2] (refused): s1, bad2; [s3, s4] passes at once.
    assert.deepEqual(seen, [['s0'], ['bad2', 's1', 's3', 's4'], ['bad2', 's1'], ['s1'], ['bad2'], ['s3', 's4']]);
  });

  it('a change that goes out at run time needs no check and never waits behind one', async () => {
    const { seen, check } = checker();
    const batch = new PrecheckBatch(() => EMPTY_STATE, check);
    let checked = false;
    const slow = batch.run(adding('s0')).then(() => {
      checked = true;
    });
    await batch.run(adding('rt1'));
    assert.equal(checked, false, 'answered while the check of s0 still ran');
    await slow;
    assert.deepEqual(seen, [['s0']]);
  });

  it('a change the state itself refuses (an aclName taken within the batch) fails alone, without a check', async () => {
    const { seen, check } = checker();
    const batch = new PrecheckBatch(() => EMPTY_STATE, check);
    const first = outcome(batch.run(adding('s0')));
    const a = outcome(batch.run(adding('a', 'shared')));
    const b = outcome(batch.run(adding('b', 'shared')));
    const c = outcome(batch.run(adding('c')));
    assert.deepEqual(await Promise.all([first, a, b, c]), ['ok', 'ok', InvalidParamError.name, 'ok']);
    assert.deepEqual(seen, [['s0'], ['a', 'c']]);
  });

  it('a check that cannot run at all (HAProxy missing) fails the whole batch with its own error', async () => {
    let calls = 0;
    const batch = new PrecheckBatch(() => EMPTY_STATE, {
      needsCheck: () => true,
      check: async () => {
        calls++;
        await new Promise((r) => setTimeout(r, 5));
        throw new Error('cannot run haproxy');
      },
    });
    const results = await Promise.all(['s0', 's1', 's2'].map((n) => outcome(batch.run(adding(n)))));
    assert.deepEqual(results, ['Error', 'Error', 'Error']);
    assert.equal(calls, 2, 'one for the first, one for the two that queued; no one-by-one retries');
  });
});
