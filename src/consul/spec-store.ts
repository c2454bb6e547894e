import { ConsulUnavailableError, type DfpError } from '../errors.js';
import { specFromJson, specToJson } from '../spec/from-json.js';
import { legacyParams } from '../spec/fields.js';
import { Params } from '../spec/params.js';
import { parseReconfigure } from '../spec/parse.js';
import type { ServiceSpec } from '../spec/types.js';
import type { Logger } from '../util/log.js';
import { aclRefusal, type ConsulClient, consulAnswer, retryTransient } from './client.js';
import { readKvPrefix } from './kv.js';

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

/** A check-and-set operation of a Consul transaction (`Value` base64, as the txn API wants it). */
interface CasOp {
  readonly Verb: 'cas' | 'delete-cas';
  readonly Key: string;
  readonly Value?: string;
  readonly Index: number;
}

interface TxnAnswer {
  Results: { KV: KvEntry }[] | null;
  Errors: { OpIndex: number; What: string }[] | null;
}

function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** The reasons a rolled-back transaction gives. */
function txnErrors(body: string): string[] {
  try {
    return ((JSON.parse(body) as TxnAnswer).Errors ?? []).map((e) => e.What);
  } catch {
    return [];
  }
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

  constructor(
    private readonly consul: ConsulClient,
    readonly instanceName: string,
    private readonly log: Logger,
    private readonly separator = ',',
  ) {
    this.prefix = `${instanceName}/_dfp/services/`;
  }

  private key(serviceName: string): string {
    return `${this.prefix}${serviceName}`;
  }

  /**
   * Writes a spec with check-and-set. A new service is tried as create-only (`cas=0`) first, which
   * saves a read; a failed CAS means someone wrote in between: read, retry. Returns a function
   * giving the KV index this write landed at, known from the write itself (see casOp), so it is
   * this write's index even if another replica has written the key since; the rollback of a failed
   * apply checks-and-sets against it.
   */
  async put(spec: ServiceSpec, knownNew = false): Promise<() => Promise<number>> {
    const key = this.key(spec.serviceName);
    const value = storedDocument(spec);
    const landed = await this.retrying(`storing ${spec.serviceName}`, async () => {
      let cas: number | undefined = knownNew ? 0 : undefined;
      for (let attempt = 0; attempt < 20; attempt++) {
        cas ??= await this.modifyIndex(key);
        const at = await this.casOp({ Verb: 'cas', Key: key, Value: base64(value), Index: cas }, `the write of ${spec.serviceName}`);
        if (at !== 'stale') return at ?? 0;
        cas = undefined;
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
    const op: CasOp = previous ? { Verb: 'cas', Key: key, Value: base64(storedDocument(previous)), Index: landedIndex } : { Verb: 'delete-cas', Key: key, Index: landedIndex };
    return this.retrying(`rolling back ${serviceName}`, async () => {
      const at = await this.casOp(op, `the rollback of ${serviceName}`);
      if (at === 'stale') return undefined;
      // A delete's answer carries no index; the prefix's index includes the delete.
      return at ?? (await this.consul.request(`/v1/kv/${this.prefix}?keys`)).index ?? 0;
    });
  }

  /** The key's ModifyIndex, 0 when it does not exist (what `cas` expects for "create"). */
  private async modifyIndex(key: string): Promise<number> {
    const res = await this.consul.request(`/v1/kv/${key}`);
    if (res.status === 404) return 0;
    if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading ${key}`);
    return (JSON.parse(res.body) as KvEntry[])[0]?.ModifyIndex ?? 0;
  }

  /**
   * One check-and-set operation through `/v1/txn`. Unlike a KV PUT (which answers only `true`), a
   * transaction answers with the entry as written, so the ModifyIndex is this write's own; reading
   * the key afterwards could already see another replica's. Returns that index (undefined for a
   * delete), or 'stale' when the key changed since `Index`.
   */
  private async casOp(op: CasOp, what: string): Promise<number | undefined | 'stale'> {
    const res = await this.consul.request('/v1/txn', { method: 'PUT', body: JSON.stringify([{ KV: op }]) });
    if (res.status === 200) return (JSON.parse(res.body) as TxnAnswer).Results?.[0]?.KV.ModifyIndex;
    // A failed check rolls the transaction back with 409, as does a refusal (an ACL's "Permission
    // denied"); only the error text tells them apart ("failed to set key ..., index is stale").
    const errors = res.status === 409 ? txnErrors(res.body) : [];
    if (errors.length > 0 && errors.every((e) => /index is stale/.test(e))) return 'stale';
    throw new ConsulUnavailableError(`Consul refused ${what}: ${aclRefusal(res.status, res.body) === undefined ? `${res.status} ${errors.join('; ') || res.body.slice(0, 200)}` : consulAnswer(res.status, res.body)}`, undefined, res.status >= 500);
  }

  /** Create-only (`cas=0`): false when the key exists already. */
  async create(spec: ServiceSpec): Promise<boolean> {
    const value = storedDocument(spec);
    const res = await this.consul.request(`/v1/kv/${this.key(spec.serviceName)}?cas=0`, { method: 'PUT', body: value });
    return res.status === 200 && res.body.trim() === 'true';
  }

  /** Deletes a spec, and the original's per-key layout of the same service. Returns the KV index. */
  async delete(serviceName: string): Promise<number> {
    return this.retrying(`removing ${serviceName}`, async () => {
      const res = await this.consul.request(`/v1/kv/${this.key(serviceName)}`, { method: 'DELETE' });
      if (res.status !== 200) throw new ConsulUnavailableError(`Consul refused to delete ${serviceName}: ${consulAnswer(res.status, res.body)}`);
      // The trailing '/' matters: without it the prefix would match `foo-v2/…` when removing `foo`.
      await this.consul.request(`/v1/kv/${this.instanceName}/${serviceName}/?recurse`, { method: 'DELETE' });
      // A KV DELETE answers without X-Consul-Index; the prefix's index includes the delete.
      const after = await this.consul.request(`/v1/kv/${this.prefix}?keys`);
      return after.index ?? 0;
    });
  }

  /** Every stored spec (a blocking read when `index` is given). */
  async list(index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<StoredSpecs & { hash: string }> {
    const read = await readKvPrefix(this.consul, this.prefix, index, waitSeconds, signal);
    if (read.folderError) this.log.warn(`${read.folderError}; the watch on the shared specs answers on every KV write near it until the key exists`);
    const specs = new Map<string, ServiceSpec>();
    const invalid: string[] = [];
    const parsed = new Map<string, Parsed>();
    for (const e of read.entries) {
      // Unchanged entries (same ModifyIndex) keep their parsed spec, the very same object: a read
      // costs parsing only what changed, and everything memoised on a spec stays valid.
      const known = this.parsed.get(e.key);
      const entry = known?.modifyIndex === e.modifyIndex ? known : this.parseEntry(e.key, e.value, e.modifyIndex);
      parsed.set(e.key, entry);
      if (entry.spec) specs.set(entry.spec.serviceName, entry.spec);
      else invalid.push(e.key);
    }
    this.parsed = parsed;
    return { specs, index: read.index, invalid, hash: read.hash };
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
