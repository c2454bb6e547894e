import os from 'node:os';
import { ConsulUnavailableError } from '../errors.js';
import { aclRefusal, type ConsulClient, consulAnswer } from './client.js';
import { certEntryValue, changesPrefix, entryValue, type LogSubject, RING_SLOTS, writerSegment } from './change-log.js';

/** An operation of a Consul transaction (`Value` base64, as the txn API wants it). */
export interface TxnOp {
  readonly Verb: 'set' | 'cas' | 'delete-cas' | 'delete';
  readonly Key: string;
  readonly Value?: string;
  readonly Index?: number;
}

/** A transaction's outcome: the ModifyIndex of each key written, or which operations failed their check. */
export type TxnOutcome = { readonly written: ReadonlyMap<string, number> } | { readonly stale: ReadonlySet<number> };

interface TxnAnswer {
  Results: { KV: { Key: string; ModifyIndex: number } }[] | null;
  Errors: { OpIndex: number; What: string }[] | null;
}

export function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** The errors of a rolled-back transaction. */
function txnErrors(body: string): { OpIndex: number; What: string }[] {
  try {
    return (JSON.parse(body) as TxnAnswer).Errors ?? [];
  } catch {
    return [];
  }
}

/** This writer's ring of the change log (change-log.ts): the ModifyIndex each slot holds, as last known. */
interface Ring {
  next: number;
  readonly slots: number[];
}

/**
 * This replica's ring of the change log, shared by everything it logs (spec-store.ts for specs,
 * certs/store.ts for certificates): one object, so concurrent writes of either kind take
 * different slots instead of racing for the same one.
 */
export class ChangeLogWriter {
  readonly changesPrefix: string;
  /** This writer's ring in the change log; the proxy names it after its replica id (setWriter). */
  writer = writerSegment(`${os.hostname()}-${process.pid}`);
  private ring: Promise<Ring> | undefined;

  constructor(
    private readonly consul: ConsulClient,
    instanceName: string,
  ) {
    this.changesPrefix = changesPrefix(instanceName);
  }

  /** Logs writes under the ring of `replicaId` from now on. */
  setWriter(replicaId: string): void {
    const writer = writerSegment(replicaId);
    if (writer === this.writer) return;
    this.writer = writer;
    this.ring = undefined;
  }

  private slotKey(slot: number): string {
    return `${this.changesPrefix}${this.writer}/${slot}`;
  }

  /**
   * `op` and the entry naming its subject in this writer's next slot of the change log, in one
   * transaction: a reader that sees the entry sees the value as written (or newer). The slot is
   * taken before the transaction, so concurrent writes take different slots; a slot found stale
   * (this id's ring written by another process, or deleted as idle) is read again and tried next
   * time. `op` is operation 0 of the transaction, the entry operation 1.
   */
  async logged(op: TxnOp, subject: LogSubject, what: string, redact = false): Promise<TxnOutcome> {
    const ring = await this.ownRing();
    const slot = ring.next;
    ring.next = (slot + 1) % RING_SLOTS;
    const prev = ring.slots[slot] ?? 0;
    const logKey = this.slotKey(slot);
    const entry = 'service' in subject ? entryValue(subject.service, prev) : certEntryValue(subject.cert, prev);
    const out = await this.txn([op, { Verb: 'cas', Key: logKey, Value: base64(entry), Index: prev }], what, redact);
    if ('written' in out) {
      ring.slots[slot] = Math.max(ring.slots[slot] ?? 0, out.written.get(logKey) ?? 0);
    } else if (out.stale.has(1)) {
      // The whole ring is read again, not just this slot: when Consul lost its data (or another
      // process writes under this id) every slot is stale, and one failed try per slot would use up
      // a write's tries. Readers rely on `prev`, not on the order of slots: a skipped slot is no hole.
      this.ring = undefined;
    }
    return out;
  }

  /**
   * `logged`, tried again while only the log's slot was stale (another process wrote it, or the
   * ring was deleted as idle): the index the transaction landed at (a delete's is its log entry's:
   * one transaction, one index), or undefined when `op`'s own check failed.
   */
  async untilLogged(op: TxnOp, subject: LogSubject, what: string, redact = false): Promise<number | undefined> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const out = await this.logged(op, subject, what, redact);
      if ('written' in out) return Math.max(...out.written.values());
      if (out.stale.has(0)) return undefined;
    }
    throw new ConsulUnavailableError(`${what}: the change log's slot kept changing`);
  }

  /**
   * This writer's ring as Consul holds it, read once: the next write goes after the newest entry,
   * so a restart does not overwrite entries readers may not have seen yet.
   */
  private ownRing(): Promise<Ring> {
    this.ring ??= (async () => {
      const res = await this.consul.request(`/v1/kv/${this.changesPrefix}${this.writer}/?recurse`);
      if (res.status !== 200 && res.status !== 404) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading the change log of ${this.writer}`);
      const slots = new Array<number>(RING_SLOTS).fill(0);
      let newest = -1;
      for (const e of res.status === 404 ? [] : (JSON.parse(res.body) as { Key: string; ModifyIndex: number }[])) {
        const slot = Number(e.Key.slice(`${this.changesPrefix}${this.writer}/`.length));
        if (!Number.isInteger(slot) || slot < 0 || slot >= RING_SLOTS) continue;
        slots[slot] = e.ModifyIndex;
        if (newest < 0 || e.ModifyIndex > (slots[newest] ?? 0)) newest = slot;
      }
      return { next: (newest + 1) % RING_SLOTS, slots };
    })().catch((err: unknown) => {
      this.ring = undefined;
      throw err;
    });
    return this.ring;
  }

  /**
   * One transaction. Unlike a KV PUT (which answers only `true`), a transaction answers with the
   * entries as written, so a ModifyIndex is this write's own; reading the key afterwards could
   * already see another replica's. A failed check rolls the transaction back with 409, as does a
   * refusal (an ACL's "Permission denied"); only the error text tells them apart ("failed to set
   * key ..., index is stale"). `redact`: never Consul's answer text in the error, which may echo a
   * value (a certificate's key).
   */
  async txn(ops: readonly TxnOp[], what: string, redact = false): Promise<TxnOutcome> {
    const res = await this.consul.request('/v1/txn', { method: 'PUT', body: JSON.stringify(ops.map((KV) => ({ KV }))) });
    if (res.status === 200) return { written: new Map(((JSON.parse(res.body) as TxnAnswer).Results ?? []).map((r) => [r.KV.Key, r.KV.ModifyIndex])) };
    const errors = res.status === 409 ? txnErrors(res.body) : [];
    if (errors.length > 0 && errors.every((e) => /index is stale/.test(e.What))) return { stale: new Set(errors.map((e) => e.OpIndex)) };
    const text = errors.map((e) => e.What).join('; ');
    const answer = redact || aclRefusal(res.status, res.body) !== undefined ? consulAnswer(res.status, res.body, !redact) : `${res.status} ${text || res.body.slice(0, 200)}`;
    throw new ConsulUnavailableError(`Consul refused ${what}: ${answer}`, undefined, res.status >= 500);
  }
}
