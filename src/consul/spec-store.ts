import { ConsulUnavailableError, type DfpError } from '../errors.js';
import { specFromJson, specToJson } from '../spec/from-json.js';
import { legacyParams } from '../spec/fields.js';
import { Params } from '../spec/params.js';
import { parseReconfigure } from '../spec/parse.js';
import type { ServiceSpec } from '../spec/types.js';
import type { Logger } from '../util/log.js';
import { type ConsulClient, consulAnswer, retryTransient } from './client.js';
import { type LogEntry, parseLog } from './change-log.js';
import { readKvPrefix } from './kv.js';
import { base64, ChangeLogWriter, type TxnOp, type TxnOutcome } from './log-writer.js';

/** GETs in flight at once when reading the specs the change log names. */
const REFRESH_CONCURRENCY = 8;

/** The stored document: versioned, so the layout can change without misreading old values. */
function storedDocument(spec: ServiceSpec): string {
  return JSON.stringify({ v: 1, spec: JSON.parse(specToJson(spec)) });
}

export interface StoredSpecs {
  readonly specs: ReadonlyMap<string, ServiceSpec>;
  /** The KV index this snapshot was read at. */
  readonly index: number;
  /** Keys whose value failed validation: skipped, reported in status. */
  readonly invalid: readonly string[];
}

interface KvEntry {
  Key: string;
  Value: string | null;
  ModifyIndex: number;
}

/** The read of the change log (changes prefix). */
export interface ChangeLogRead {
  readonly log: readonly LogEntry[];
  /** X-Consul-Index of the read: the KV index of the newest logged change (or deletion of a ring). */
  readonly index: number;
}

interface Parsed {
  readonly modifyIndex: number;
  /** Undefined: the entry is not a valid spec (logged once, when it was read). */
  readonly spec: ServiceSpec | undefined;
}

/** How long a write keeps retrying while Consul has no leader (an election takes ~3 s). */
const WRITE_RETRY_MS = 10_000;

/**
 * The desired state shared by every proxy with the same PROXY_INSTANCE_NAME: one JSON document per
 * service at `<instance>/_dfp/services/<serviceName>`, written with check-and-set. (`_dfp` cannot be
 * a service name, so it never collides with the original's `<instance>/<serviceName>/<key>` layout,
 * which is still read on start for in-place upgrades.)
 */
export class ConsulSpecStore {
  readonly prefix: string;
  /** The change log's prefix (change-log.ts). */
  readonly changesPrefix: string;
  /**
   * This replica's ring of the change log, which the certificates' store (certs/store.ts) shares:
   * both kinds of writes take slots of one ring.
   */
  readonly logWriter: ChangeLogWriter;

  constructor(
    private readonly consul: ConsulClient,
    readonly instanceName: string,
    private readonly log: Logger,
    private readonly separator = ',',
  ) {
    this.prefix = `${instanceName}/_dfp/services/`;
    this.logWriter = new ChangeLogWriter(consul, instanceName);
    this.changesPrefix = this.logWriter.changesPrefix;
  }

  /** This store's ring in the change log. */
  get writer(): string {
    return this.logWriter.writer;
  }

  /** Logs this store's writes (and the certificates', sharing the writer) under the ring of `replicaId` from now on. */
  setWriter(replicaId: string): void {
    this.logWriter.setWriter(replicaId);
  }

  private key(serviceName: string): string {
    return `${this.prefix}${serviceName}`;
  }

  /**
   * Writes a spec with check-and-set. A new service is tried as create-only (`cas=0`) first, which
   * saves a read; a failed CAS means someone wrote in between: read, retry. Returns a function
   * giving the KV index this write landed at, known from the write itself (see txn), so it is
   * this write's index even if another replica has written the key since; the rollback of a failed
   * apply checks-and-sets against it.
   */
  async put(spec: ServiceSpec, knownNew = false): Promise<() => Promise<number>> {
    const key = this.key(spec.serviceName);
    const value = base64(storedDocument(spec));
    const landed = await this.retrying(`storing ${spec.serviceName}`, async () => {
      let cas: number | undefined = knownNew ? 0 : undefined;
      for (let attempt = 0; attempt < 20; attempt++) {
        cas ??= await this.modifyIndex(key);
        const out = await this.logged({ Verb: 'cas', Key: key, Value: value, Index: cas }, spec.serviceName, `the write of ${spec.serviceName}`);
        if ('written' in out) return out.written.get(key) ?? 0;
        if (out.stale.has(0)) cas = undefined;
      }
      throw new ConsulUnavailableError(`could not store ${spec.serviceName}: the key kept changing under concurrent writes`);
    });
    return async () => landed;
  }

  /**
   * Takes back this replica's write of a service that landed at `landedIndex` and then failed to
   * apply here: puts `previous` back, or deletes the key when there was none, with check-and-set on
   * that index. Returns the index the take-back landed at, or undefined when the key has changed
   * since: that write is another replica's, newer than ours, and must not be undone.
   */
  async undo(serviceName: string, landedIndex: number, previous: ServiceSpec | undefined): Promise<number | undefined> {
    const key = this.key(serviceName);
    const op: TxnOp = previous ? { Verb: 'cas', Key: key, Value: base64(storedDocument(previous)), Index: landedIndex } : { Verb: 'delete-cas', Key: key, Index: landedIndex };
    return this.retrying(`rolling back ${serviceName}`, () => this.logWriter.untilLogged(op, { service: serviceName }, `the rollback of ${serviceName}`));
  }

  /** The key's ModifyIndex, 0 when it does not exist (what `cas` expects for "create"). */
  private async modifyIndex(key: string): Promise<number> {
    const res = await this.consul.request(`/v1/kv/${key}`);
    if (res.status === 404) return 0;
    if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading ${key}`);
    return (JSON.parse(res.body) as KvEntry[])[0]?.ModifyIndex ?? 0;
  }

  /** `op` on a spec and the entry naming its service in the change log, in one transaction (log-writer.ts). */
  private logged(op: TxnOp, serviceName: string, what: string): Promise<TxnOutcome> {
    return this.logWriter.logged(op, { service: serviceName }, what);
  }

  /** Create-only (`cas=0`): false when the key exists already. */
  async create(spec: ServiceSpec): Promise<boolean> {
    const op: TxnOp = { Verb: 'cas', Key: this.key(spec.serviceName), Value: base64(storedDocument(spec)), Index: 0 };
    return (await this.logWriter.untilLogged(op, { service: spec.serviceName }, `the write-back of ${spec.serviceName}`)) !== undefined;
  }

  /** Deletes a spec, and the original's per-key layout of the same service. Returns the KV index. */
  async delete(serviceName: string): Promise<number> {
    return this.retrying(`removing ${serviceName}`, async () => {
      const index = await this.logWriter.untilLogged({ Verb: 'delete', Key: this.key(serviceName) }, { service: serviceName }, `the removal of ${serviceName}`);
      // The trailing '/' matters: without it the prefix would match `foo-v2/…` when removing `foo`.
      await this.consul.request(`/v1/kv/${this.instanceName}/${serviceName}/?recurse`, { method: 'DELETE' });
      return index ?? 0;
    });
  }

  /**
   * The change log (a blocking read when `index` is given): small, RING_SLOTS entries per writer at
   * most, and it changes with every logged write of a spec.
   */
  async changes(index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<ChangeLogRead> {
    const read = await readKvPrefix(this.consul, this.changesPrefix, index, waitSeconds, signal);
    if (read.folderError) this.log.warn(`${read.folderError}; the watch on the change log answers on every KV write near it until the key exists`);
    return { log: parseLog(this.changesPrefix, read.entries), index: read.index };
  }

  /**
   * Reads the specs of these services again, one GET each (a few at a time): each one's spec now,
   * or undefined when its key is gone or holds no valid spec. Only these: a change costs what it
   * names, not a copy of every spec held (10,000 of them took ~7 ms per change).
   */
  async refresh(serviceNames: Iterable<string>): Promise<ReadonlyMap<string, ServiceSpec | undefined>> {
    const queue = [...serviceNames];
    const out = new Map<string, ServiceSpec | undefined>();
    await Promise.all(
      Array.from({ length: Math.min(REFRESH_CONCURRENCY, queue.length) }, async () => {
        for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
          const key = this.key(name);
          const res = await this.consul.request(`/v1/kv/${key}`);
          if (res.status === 404) {
            this.parsed.delete(key);
            out.set(name, undefined);
            continue;
          }
          if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading ${key}`);
          const e = (JSON.parse(res.body) as KvEntry[])[0];
          if (e && this.parsed.get(key)?.modifyIndex !== e.ModifyIndex) {
            this.parsed.set(key, this.parseEntry(key, Buffer.from(e.Value ?? '', 'base64').toString('utf8'), e.ModifyIndex));
          }
          out.set(name, this.parsed.get(key)?.spec);
        }
      }),
    );
    return out;
  }

  /** Keys of the last reads whose value failed validation. */
  invalidKeys(): string[] {
    const out: string[] = [];
    for (const [key, entry] of this.parsed) if (!entry.spec) out.push(key);
    return out;
  }

  /** The specs of the last reads (list, refresh), at `index`. */
  private held(index: number): StoredSpecs {
    const specs = new Map<string, ServiceSpec>();
    const invalid: string[] = [];
    for (const [key, entry] of this.parsed) {
      if (entry.spec) specs.set(entry.spec.serviceName, entry.spec);
      else invalid.push(key);
    }
    return { specs, index, invalid };
  }

  /**
   * Deletes another writer's ring, each entry with check-and-set on the index it was read at: a
   * writer that comes back and writes meanwhile keeps its entry. False when something changed.
   */
  async deleteRing(entries: readonly LogEntry[]): Promise<boolean> {
    let all = true;
    // Consul 1.8 takes at most 64 operations per transaction.
    for (let i = 0; i < entries.length; i += 64) {
      const ops: TxnOp[] = entries.slice(i, i + 64).map((e) => ({ Verb: 'delete-cas', Key: e.key, Index: e.modifyIndex }));
      const out = await this.logWriter.txn(ops, `deleting the idle change log of ${entries[0]?.writer}`);
      if ('stale' in out) all = false;
    }
    return all;
  }

  /** Every stored spec (a blocking read when `index` is given). */
  async list(index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<StoredSpecs & { hash: string }> {
    const read = await readKvPrefix(this.consul, this.prefix, index, waitSeconds, signal);
    if (read.folderError) this.log.warn(`${read.folderError}; the watch on the shared specs answers on every KV write near it until the key exists`);
    const parsed = new Map<string, Parsed>();
    for (const e of read.entries) {
      // Unchanged entries (same ModifyIndex) keep their parsed spec, the very same object: a read
      // costs parsing only what changed, and everything memoised on a spec stays valid.
      const known = this.parsed.get(e.key);
      parsed.set(e.key, known?.modifyIndex === e.modifyIndex ? known : this.parseEntry(e.key, e.value, e.modifyIndex));
    }
    this.parsed = parsed;
    return { ...this.held(read.index), hash: read.hash };
  }

  /** The last read's entries by key, parsed (see list). */
  private parsed = new Map<string, Parsed>();

  private parseEntry(key: string, value: string, modifyIndex: number): Parsed {
    try {
      const doc = JSON.parse(value) as { v?: number; spec?: unknown };
      const spec = specFromJson(doc.spec, this.separator);
      if (this.key(spec.serviceName) !== key) throw new Error(`key does not match serviceName ${spec.serviceName}`);
      return { modifyIndex, spec };
    } catch (err) {
      this.log.error(`ignoring ${key}: not a valid service spec (${(err as Error).message})`);
      return { modifyIndex, spec: undefined };
    }
  }

  /**
   * Services stored by the original Docker Flow Proxy (one key per attribute under
   * `<instance>/<serviceName>/`), converted through the same parser as a request. Services using
   * attributes this version does not support are skipped with a warning.
   */
  async legacy(): Promise<ServiceSpec[]> {
    const res = await this.consul.request(`/v1/kv/${this.instanceName}/?recurse`);
    if (res.status === 404) return [];
    if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading ${this.instanceName}/`);
    const byService = new Map<string, Map<string, string>>();
    for (const e of JSON.parse(res.body) as KvEntry[]) {
      const rest = e.Key.slice(this.instanceName.length + 1).split('/');
      if (rest.length !== 2 || rest[0] === '_dfp' || rest[0] === 'service' || !rest[0] || !rest[1]) continue;
      const attrs = byService.get(rest[0]) ?? new Map<string, string>();
      attrs.set(rest[1], Buffer.from(e.Value ?? '', 'base64').toString('utf8'));
      byService.set(rest[0], attrs);
    }
    const out: ServiceSpec[] = [];
    for (const [name, attrs] of byService) {
      if (!attrs.has('path')) continue;
      const pairs = legacyParams(name, attrs);
      try {
        const parsed = parseReconfigure(new Params(pairs), { separator: this.separator });
        if (parsed.kind === 'upsert') out.push(parsed.spec);
      } catch (err) {
        this.log.warn(`not restoring legacy service ${name} from ${this.instanceName}/${name}/: ${(err as DfpError).message}`);
      }
    }
    return out;
  }

  private async retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await retryTransient(fn, WRITE_RETRY_MS, (err) => this.log.warn(`${what}: ${err.message}; retrying`));
    } catch (err) {
      throw err instanceof ConsulUnavailableError ? new ConsulUnavailableError(`${what}: ${err.message}; nothing was changed`, undefined, err.transient) : err;
    }
  }
}
