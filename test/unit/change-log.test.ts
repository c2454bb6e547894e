import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { certEntryValue, changesSince, entryValue, idleRings, type LogEntry, parseLog, writerSegment } from '../../src/consul/change-log.js';

const prefix = 'p/_dfp/changes/';

function entry(writer: string, slot: number, modifyIndex: number, service: string, prev: number, at = Date.now()): LogEntry {
  return { key: `${prefix}${writer}/${slot}`, writer, slot, modifyIndex, service, cert: undefined, prev, at };
}

function certEntry(writer: string, slot: number, modifyIndex: number, cert: string, prev: number): LogEntry {
  return { key: `${prefix}${writer}/${slot}`, writer, slot, modifyIndex, service: undefined, cert, prev, at: Date.now() };
}

describe('change log', () => {
  it('reads entries shaped <writer>/<slot>, and marks values it does not know as invalid', () => {
    const log = parseLog(prefix, [
      { key: `${prefix}a:1/0`, value: entryValue('web', 0, 5), modifyIndex: 10 },
      { key: `${prefix}a:1/1`, value: '{"v":2,"service":"x"}', modifyIndex: 11 },
      { key: `${prefix}a:1/notaslot`, value: entryValue('web', 0), modifyIndex: 12 },
      { key: `${prefix}stray`, value: '', modifyIndex: 13 },
    ]);
    assert.deepEqual(
      log.map((e) => [e.writer, e.slot, e.service, e.prev, e.at]),
      [
        ['a:1', 0, 'web', 0, 5],
        ['a:1', 1, undefined, 0, 0],
      ],
    );
  });

  it('reads certificate entries apart from service entries; one naming both, or neither, is invalid', () => {
    const log = parseLog(prefix, [
      { key: `${prefix}a/0`, value: certEntryValue('a.com', 3, 7), modifyIndex: 10 },
      { key: `${prefix}a/1`, value: JSON.stringify({ v: 1, service: 'web', cert: 'a.com', prev: 0 }), modifyIndex: 11 },
      { key: `${prefix}a/2`, value: JSON.stringify({ v: 1, cert: '', prev: 0 }), modifyIndex: 12 },
      { key: `${prefix}a/3`, value: JSON.stringify({ v: 1, cert: 'b.com' }), modifyIndex: 13 },
    ]);
    assert.deepEqual(
      log.map((e) => [e.slot, e.service, e.cert, e.prev, e.at]),
      [
        [0, undefined, 'a.com', 3, 7],
        [1, undefined, undefined, 0, 0],
        [2, undefined, undefined, 0, 0],
        [3, undefined, undefined, 0, 0],
      ],
    );
  });

  it('an entry that names neither a service nor a certificate asks for a full read (as the version before certificate entries took them)', () => {
    // Not the old code itself: what its parseLog made of an entry without a `service` (service
    // undefined), fed to this changesSince. Mixed versions stay correct, only slower (change-log.ts).
    const old = parseLog(prefix, [{ key: `${prefix}a/0`, value: certEntryValue('a.com', 0), modifyIndex: 10 }]).map((e) => ({ ...e, cert: undefined }));
    const verdict = changesSince(old, 5);
    assert.ok('full' in verdict && /not one this version writes/.test(verdict.full), JSON.stringify(verdict));
  });

  it('names the certificates changed apart from the services; each reader applies the limit to its own kind', () => {
    const log = [entry('a', 0, 11, 'web', 0), certEntry('a', 1, 12, 'a.com', 0), certEntry('b', 0, 13, 'b.com', 0), certEntry('b', 1, 14, 'a.com', 0), certEntry('b', 2, 9, 'old.com', 0)];
    const verdict = changesSince(log, 10);
    assert.ok('services' in verdict);
    assert.deepEqual([...verdict.services], ['web']);
    assert.deepEqual([...verdict.certs].sort(), ['a.com', 'b.com']);
    // Two certificates are over a limit of 1 for the certificates' reader, not for the specs'.
    assert.ok('services' in changesSince(log, 10, 1, 'services'));
    const many = changesSince(log, 10, 1, 'certs');
    assert.ok('full' in many && /2 certificates changed at once/.test(many.full), JSON.stringify(many));
    // A wrapped ring is a doubt for every reader, whatever kind the overwritten entry named.
    assert.ok('full' in changesSince([entry('a', 0, 15, 'web', 11)], 10, 32, 'certs'));
    assert.ok('full' in changesSince([certEntry('a', 0, 15, 'a.com', 11)], 10, 32, 'services'));
  });

  it('names the services changed since the index held, each once', () => {
    const log = [entry('a', 0, 10, 'old', 0), entry('a', 1, 12, 'web', 0), entry('b', 0, 13, 'web', 0), entry('b', 1, 14, 'api', 3)];
    const verdict = changesSince(log, 10);
    assert.ok('services' in verdict);
    assert.deepEqual([...verdict.services].sort(), ['api', 'web']);
  });

  it('reads everything when an entry overwrote one newer than the index held (a wrapped ring)', () => {
    // Slot 0 held an entry at 11, unseen by a reader at 10, and was overwritten at 15.
    const wrapped = changesSince([entry('a', 0, 15, 'web', 11)], 10);
    assert.ok('full' in wrapped && /wrapped/.test(wrapped.full));
    // The same overwrite of an entry the reader had seen (prev 9 <= 10) is an ordinary change.
    assert.ok('services' in changesSince([entry('a', 0, 15, 'web', 9)], 10));
  });

  it('reads everything for an entry it does not know, and for more changes than the limit', () => {
    const unknown = changesSince([{ ...entry('a', 0, 15, 'web', 0), service: undefined }], 10);
    assert.ok('full' in unknown);
    assert.ok('full' in changesSince([{ ...entry('a', 0, 15, 'web', 0), service: undefined }], 10, 32, 'certs'));
    const many = Array.from({ length: 5 }, (_, i) => entry('a', i, 20 + i, `s${i}`, 0));
    assert.ok('full' in changesSince(many, 10, 4));
    assert.ok('services' in changesSince(many, 10, 5));
  });

  it('picks the rings idle for the given time, never its own', () => {
    const now = 10_000_000;
    const log = [entry('gone', 0, 1, 'a', 0, now - 7_200_000), entry('gone', 1, 2, 'b', 0, now - 3_700_000), entry('busy', 0, 3, 'a', 0, now - 7_200_000), entry('busy', 1, 4, 'a', 0, now - 1000), entry('me', 0, 5, 'a', 0, 0)];
    assert.deepEqual([...idleRings(log, 'me', now, 3_600_000).keys()], ['gone']);
  });

  it('makes replica ids safe as one key segment, keeping distinct ids apart', () => {
    assert.equal(writerSegment('host-1:8080'), 'host-1:8080');
    const slash = writerSegment('a/b');
    assert.match(slash, /^a_b-[0-9a-f]{8}$/);
    assert.notEqual(slash, writerSegment('a?b'));
    assert.notEqual(writerSegment('a_b'), slash);
  });
});
