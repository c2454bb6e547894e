import { createHash } from 'node:crypto';
import type { KvValue } from './kv.js';

/**
 * The change log beside the shared specs: which services changed, so a replica reads only those
 * specs instead of the whole prefix (Consul 1.8 cannot list the keys changed since an index).
 *
 * Each writer (replica) owns a ring of RING_SLOTS keys, `<instance>/_dfp/changes/<writer>/<slot>`,
 * and every write of a spec puts `{ v: 1, service, prev, at }` into its next slot in the same
 * transaction as the spec, so the entry's ModifyIndex is the spec write's. `prev` is the ModifyIndex
 * the slot held before (the put is a check-and-set on it): an entry newer than what a reader holds
 * whose `prev` is newer too overwrote an entry that reader never saw, and the reader reads
 * everything instead. That holds however the writes of one writer land relative to each other,
 * which "every slot of the ring is newer" would not catch (a slow write landing after 63 quick ones).
 */

/** Slots per writer: how many changes of one writer a reader may fall behind before it reads everything. */
export const RING_SLOTS = 64;

/** More changed services than this at once, and reading the whole prefix is cheaper than one GET each. */
export const INCREMENTAL_LIMIT = 32;

/** A ring none of whose entries is younger than this is deleted (its writer is gone, or idle). */
export const RING_IDLE_MS = 60 * 60 * 1000;

export interface LogEntry {
  readonly key: string;
  readonly writer: string;
  readonly slot: number;
  readonly modifyIndex: number;
  /** Undefined: not a valid entry (written by hand, or by a later layout). */
  readonly service: string | undefined;
  readonly prev: number;
  /** Date.now() of the writer when it wrote the entry (0 when unknown). */
  readonly at: number;
}

export function changesPrefix(instanceName: string): string {
  return `${instanceName}/_dfp/changes/`;
}

/**
 * The replica id as one key segment: ids are `host:port` or REPLICA_ID, which may hold `/` or
 * characters a URL path would need escaped. A changed id gets a hash suffix, so two ids that differ
 * only in such characters stay apart.
 */
export function writerSegment(replicaId: string): string {
  const safe = replicaId.replace(/[^A-Za-z0-9._:-]/g, '_');
  if (safe === replicaId && safe.length > 0 && safe.length <= 128) return safe;
  return `${safe.slice(0, 100)}-${createHash('sha256').update(replicaId).digest('hex').slice(0, 8)}`;
}

export function entryValue(service: string, prev: number, at = Date.now()): string {
  return JSON.stringify({ v: 1, service, prev, at });
}

/** The entries of a read of the changes prefix; keys not shaped `<writer>/<slot>` are left out. */
export function parseLog(prefix: string, entries: readonly KvValue[]): LogEntry[] {
  const out: LogEntry[] = [];
  for (const e of entries) {
    const rest = e.key.slice(prefix.length).split('/');
    if (rest.length !== 2 || !rest[0] || !/^\d+$/.test(rest[1] ?? '')) continue;
    let service: string | undefined;
    let prev = 0;
    let at = 0;
    try {
      const doc = JSON.parse(e.value) as { v?: unknown; service?: unknown; prev?: unknown; at?: unknown };
      if (doc.v === 1 && typeof doc.service === 'string' && doc.service !== '' && typeof doc.prev === 'number') {
        service = doc.service;
        prev = doc.prev;
        at = typeof doc.at === 'number' ? doc.at : 0;
      }
    } catch {
      // not JSON: service stays undefined
    }
    out.push({ key: e.key, writer: rest[0], slot: Number(rest[1]), modifyIndex: e.modifyIndex, service, prev, at });
  }
  return out;
}

export type LogVerdict = { readonly services: ReadonlySet<string> } | { readonly full: string };

/**
 * What a reader holding the specs up to KV index `held` must read: the services changed since, or
 * everything (and why) when the log cannot say for sure or a full read is cheaper.
 */
export function changesSince(log: readonly LogEntry[], held: number, limit = INCREMENTAL_LIMIT): LogVerdict {
  const services = new Set<string>();
  for (const e of log) {
    if (e.modifyIndex <= held) continue;
    if (e.service === undefined) return { full: `the change log entry ${e.key} is not one this version writes` };
    if (e.prev > held) return { full: `the change log of ${e.writer} wrapped past index ${held}` };
    services.add(e.service);
  }
  if (services.size > limit) return { full: `${services.size} services changed at once` };
  return { services };
}

/** Rings (by writer) whose newest entry is older than `idleMs`, except `self`'s. */
export function idleRings(log: readonly LogEntry[], self: string, now = Date.now(), idleMs = RING_IDLE_MS): Map<string, LogEntry[]> {
  const rings = new Map<string, LogEntry[]>();
  for (const e of log) {
    if (e.writer === self) continue;
    const ring = rings.get(e.writer) ?? [];
    ring.push(e);
    rings.set(e.writer, ring);
  }
  for (const [writer, ring] of rings) if (ring.some((e) => now - e.at < idleMs)) rings.delete(writer);
  return rings;
}
