import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { applyInParts } from '../../src/apply/in-parts.js';

class LimitError extends Error {}

/**
 * A model of HAProxy accepting items on top of what it holds: items named `bad*` are refused
 * whatever else is there; `checked` items take one unit of a fixed capacity, others none.
 */
function model(capacity: number) {
  const held = new Set<string>();
  let attempts = 0;
  const cost = (items: Iterable<string>) => [...items].filter((i) => i.startsWith('checked')).length;
  const attempt = async (part: readonly string[]): Promise<Error | undefined> => {
    attempts++;
    const bad = part.find((i) => i.startsWith('bad'));
    if (bad) return new Error(`${bad} is bad`);
    if (cost(new Set([...held, ...part])) > capacity) return new LimitError('no room');
    for (const i of part) held.add(i);
    return undefined;
  };
  return { held, attempt, attempts: () => attempts };
}

const limit = { ends: (e: Error) => e instanceof LimitError, spares: (i: string) => !i.startsWith('checked') };

describe('applyInParts', () => {
  it('refuses exactly the bad items, in a few attempts each, and applies all the others', async () => {
    const items = Array.from({ length: 1000 }, (_, i) => ([137, 512, 513, 900].includes(i) ? `bad${i}` : `ok${i}`));
    const m = model(Number.POSITIVE_INFINITY);
    const first = await m.attempt(items);
    assert.ok(first);
    const refused = await applyInParts(items, first, m.attempt, limit);
    assert.deepEqual(
      refused.map((r) => r.item),
      ['bad137', 'bad512', 'bad513', 'bad900'],
    );
    assert.equal(m.held.size, 996);
    // ~log2(1000) per refused item plus one try of each remainder; one at a time would be 1000.
    assert.ok(m.attempts() <= 4 * 12, `${m.attempts()} attempts`);
  });

  it('at a limit: the longest run that fits, then only what needs no room', async () => {
    const items = Array.from({ length: 300 }, (_, i) => (i % 10 === 9 ? `free${i}` : `checked${i}`));
    const m = model(100);
    const first = await m.attempt(items);
    assert.ok(first instanceof LimitError);
    const refused = await applyInParts(items, first, m.attempt, limit);
    const fit = items.slice(0, items.indexOf('checked111'));
    for (const i of fit) assert.ok(m.held.has(i), `${i} applied`);
    assert.equal([...m.held].filter((i) => i.startsWith('checked')).length, 100);
    assert.ok(
      items.filter((i) => i.startsWith('free')).every((i) => m.held.has(i)),
      'every item that needs no room is applied',
    );
    assert.equal(refused.length, 300 - m.held.size);
    assert.ok(refused.every((r) => r.item.startsWith('checked') && r.error instanceof LimitError));
    assert.ok(m.attempts() <= 15, `${m.attempts()} attempts`);
  });
});
