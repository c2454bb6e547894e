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
 *
 * The shared certificates are logged in the same rings: a write or delete of a certificate puts
 * `{ v: 1, cert, prev, at }` into the writer's next slot, in the same transaction. One blocking read
 * of the log thus wakes both followers (fleet.ts for specs, certs/manager.ts for certificates), and
 * each reads only the names of its kind. A version that knows only `service` entries takes a `cert`
 * entry for one it does not understand (service undefined) and reads every spec: correct, only
 * slower, while versions are mixed during a rolling upgrade.
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
  /** The service whose spec changed; undefined for a certificate's entry or an invalid one. */
  readonly service: string | undefined;
  /** The certificate stored or deleted; undefined for a service's entry or an invalid one. */
  readonly cert: string | undefined;
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

/** The entry of a certificate's write or delete. */
export function certEntryValue(cert: string, prev: number, at = Date.now()): string {
  return JSON.stringify({ v: 1, cert, prev, at });
}

/** What an entry names: a service or a certificate. */
export type LogSubject = { readonly service: string } | { readonly cert: string };

/** The entries of a read of the changes prefix; keys not shaped `<writer>/<slot>` are left out. */
export function parseLog(prefix: string, entries: readonly KvValue[]): LogEntry[] {
  const out: LogEntry[] = [];
  for (const e of entries) {
    const rest = e.key.slice(prefix.length).split('/');
    if (rest.length !== 2 || !rest[0] || !/^\d+$/.test(rest[1] ?? '')) continue;
    let service: string | undefined;
    let cert: string | undefined;
    let prev = 0;
    let at = 0;
    try {
      const doc = JSON.parse(e.value) as { v?: unknown; service?: unknown; cert?: unknown; prev?: unknown; at?: unknown };
      const named = (x: unknown) => typeof x === 'string' && x !== '';
      // Exactly one of the two: an entry naming both (or neither) is not one this version writes.
      if (doc.v === 1 && named(doc.service) !== named(doc.cert) && typeof doc.prev === 'number') {
        service = named(doc.service) ? (doc.service as string) : undefined;
        cert = named(doc.cert) ? (doc.cert as string) : undefined;
        prev = doc.prev;
        at = typeof doc.at === 'number' ? doc.at : 0;
      }
    } catch {
      // not JSON: neither service nor cert
    }
    out.push({ key: e.key, writer: rest[0], slot: Number(rest[1]), modifyIndex: e.modifyIndex, service, cert, prev, at });
  }
  return out;
}

export type LogVerdict = { readonly services: ReadonlySet<string>; readonly certs: ReadonlySet<string> } | { readonly full: string };

/**
 * What a reader holding its kind (`of`) up to KV index `held` must read: the services and the
 * certificates changed since, or everything (and why) when the log cannot say for sure (an entry
 * of either kind it does not know, a wrapped ring: either could hide a change of its kind) or when
 * more than `limit` of its own kind changed and a full read is cheaper.
 */
export function changesSince(log: readonly LogEntry[], held: number, limit = INCREMENTAL_LIMIT, of: 'services' | 'certs' = 'services'): LogVerdict {
  const services = new Set<string>();
  const certs = new Set<string>();
  for (const e of log) {
    if (e.modifyIndex <= held) continue;
    if (e.service === undefined && e.cert === undefined) return { full: `the change log entry ${e.key} is not one this version writes` };
    if (e.prev > held) return { full: `the change log of ${e.writer} wrapped past index ${held}` };
    if (e.service !== undefined) services.add(e.service);
    if (e.cert !== undefined) certs.add(e.cert);
  }
  const mine = of === 'services' ? services : certs;
  if (mine.size > limit) return { full: `${mine.size} ${of === 'services' ? 'services' : 'certificates'} changed at once` };
  return { services, certs };
}

/**
 * One read of the change log as its follower (fleet.ts) hands it on to another reader of it
 * (certs/manager.ts): the entries, to be judged against what that reader holds, or a full read
 * the follower decided on for everyone (start-up, a failed step, the periodic one, a wait that
 * ended with no change). `lost`: Consul's index went backwards, it lost its data.
 */
export type LogWake = { readonly index: number; readonly log: readonly LogEntry[] } | { readonly index: number; readonly full: string; readonly lost?: boolean };

/** A reader woken by the change log's follower instead of holding a blocking query of its own. */
export interface LogReader {
  /** Must not block: the follower goes on with its own step. */
  logged(wake: LogWake): void;
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
