import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { repeatWithBackoff, retryUntilDone } from './consul/kv.js';
import type { Reconciler, SubmitOptions } from './apply/reconciler.js';
import { ConfigRejectedError, FdLimitError, ReloadFailedError, ReplicasLaggingError, ReplicasUnknownError } from './errors.js';
import { listReplicas, noReportsReason, type ReplicaReport } from './consul/replicas.js';
import { applyInParts } from './apply/in-parts.js';
import { changesSince, idleRings, INCREMENTAL_LIMIT, type LogReader } from './consul/change-log.js';
import type { ChangeLogRead, ConsulSpecStore, StoredSpecs } from './consul/spec-store.js';
import { type InstanceFollower, type InstanceSource, NO_FOLLOWER } from './discovery/types.js';
import { specToJson } from './spec/from-json.js';
import { consulServiceName, type ServiceSpec } from './spec/types.js';
import { type DesiredState, withoutServices, withServices } from './state/desired-state.js';
import type { Logger } from './util/log.js';

/**
 * Hash of a set of specs, independent of order and of anything host-specific: the sum, modulo
 * 2^64 (two 32-bit halves), of each spec's own digest, which is computed once per spec object.
 * A replica report carries it after every change, and sorting and hashing every spec's JSON cost
 * ~5 ms per change at 10,000 services; this costs a lookup per spec.
 */
export function specsHash(specs: Iterable<ServiceSpec>): string {
  let high = 0;
  let low = 0;
  for (const spec of specs) {
    const d = digestOf(spec);
    const sum = low + d.low;
    low = sum >>> 0;
    high = (high + d.high + (sum > 0xffffffff ? 1 : 0)) >>> 0;
  }
  return `${high.toString(16).padStart(8, '0')}${low.toString(16).padStart(8, '0')}`;
}

const digests = new WeakMap<ServiceSpec, { readonly high: number; readonly low: number }>();

function digestOf(spec: ServiceSpec): { readonly high: number; readonly low: number } {
  let d = digests.get(spec);
  if (d === undefined) {
    // Not kept: the digest is all later reports need (10,000 specs' JSON is ~3 MB).
    const bytes = createHash('sha256')
      .update(jsonMemo.get(spec) ?? specToJson(spec))
      .digest();
    d = { high: bytes.readUInt32BE(0), low: bytes.readUInt32BE(4) };
    digests.set(spec, d);
  }
  return d;
}

/** Specs are immutable: each is serialised once, not on every replica report (O(services) each). */
const jsonMemo = new WeakMap<ServiceSpec, string>();
function jsonOf(spec: ServiceSpec): string {
  let json = jsonMemo.get(spec);
  if (json === undefined) {
    json = specToJson(spec);
    jsonMemo.set(spec, json);
  }
  return json;
}

/**
 * The proxy as one replica of a fleet sharing PROXY_INSTANCE_NAME: restores the shared specs on
 * start, follows the KV prefix so a change made on any replica reaches this one, and knows which
 * KV index it has applied (published by the ReplicaPublisher, read by `wait=all`).
 */
export class Fleet {
  /** The KV index of the shared specs whose content is live here. */
  kvIndex = 0;
  /** The change log's index at the start-up restore: where following it begins. */
  private logIndex = 0;
  /**
   * How often at most the specs are read whole even while the change log keeps changing, to pick
   * up specs written without a log entry (by hand, or by an older version). Tests shorten it.
   */
  fullReadEveryMs = 5 * 60 * 1000;
  /** More services changed at once than this, and the whole prefix is read (tests lower it). */
  incrementalLimit = INCREMENTAL_LIMIT;
  /**
   * Shared specs HAProxy refused here (fleet applySpecs), as the parsed objects the store hands
   * back while a spec is unchanged: not tried again on every later change, only once they change,
   * a service is removed, or at the next full read (at least every fullReadEveryMs).
   */
  private refusedSpecs = new Set<ServiceSpec>();
  /**
   * Other readers of the change log (the certificates' manager), woken by this follower's blocking
   * query instead of holding one each: every read of the log is handed on, with the reason when
   * everything is to be read whatever the log says.
   */
  readonly logReaders: LogReader[] = [];
  /** Reads of the shared specs since start: whole (the prefix) and from the change log (only what it names). */
  readonly reads = { full: 0, logged: 0, specsFetched: 0 };
  restored = false;
  invalid: readonly string[] = [];
  private readonly ctrl = new AbortController();
  /** The KV index of this replica's newest write: older snapshots must not undo it. */
  private ownWrite = 0;
  private writesInFlight = 0;
  /** Resolves when writesInFlight next drops to 0. */
  private writesDone: Promise<void> = Promise.resolve();
  private releaseWrites: () => void = () => undefined;
  private watching: Promise<void> | undefined;

  constructor(
    private readonly store: ConsulSpecStore,
    private readonly reconciler: Reconciler,
    private readonly instances: InstanceSource,
    readonly replicaPrefix: string,
    private readonly consulForReplicas: Parameters<typeof listReplicas>[0],
    private readonly onApplied: () => void,
    private readonly log: Logger,
    private readonly waitSeconds: number,
    /** The instance watch, told what direct reads found (it may hold newer instances). */
    private readonly follower: InstanceFollower = NO_FOLLOWER,
    /**
     * Services of this replica's own (the environment's DFP_SERVICE_*): applied under the shared
     * specs, which win for the same name; never written to KV, never removed by a KV change.
     */
    private readonly local: ReadonlyMap<string, ServiceSpec> = new Map(),
  ) {}

  /**
   * Loads every stored spec (and the original's legacy layout, migrated) and applies them in one
   * go. Retries until Consul answers; the proxy is not ready before. `onRetry` hears why a try failed.
   * `source` gives the instances; a function giving one (the catalog model, warming up meanwhile)
   * is asked only once the specs are read, so both reads run side by side and its wait starts
   * when Consul answers. Undefined: one read per service.
   */
  async restore(source?: InstanceSource | (() => Promise<InstanceSource | undefined>), onRetry?: (err: Error) => void): Promise<void> {
    await retryUntilDone(
      this.ctrl.signal,
      async () => {
        // The change log first: the specs read after it hold every change it names (see followStep).
        const changes = await this.store.changes();
        const stored = await this.store.list();
        const seenAt = performance.now();
        const specs = new Map(stored.specs);
        for (const spec of await this.store.legacy()) {
          if (specs.has(spec.serviceName)) continue;
          this.log.info(`migrating ${spec.serviceName} from the original's KV layout`);
          await this.store.put(spec);
          specs.set(spec.serviceName, spec);
        }
        const instances = (typeof source === 'function' ? await source() : source) ?? this.instances;
        const counts = await this.applySpecs(specs, 'start-up restore', true, instances, { source: 'restore', seenAt });
        this.kvIndex = Math.max(stored.index, changes.index);
        this.logIndex = changes.index;
        // The certificates were restored before this read of the log: what changed since is in it.
        for (const r of this.logReaders) r.logged({ index: changes.index, log: changes.log });
        this.invalid = stored.invalid;
        this.restored = true;
        this.log.info(`restored ${specs.size} service${specs.size === 1 ? '' : 's'} from Consul KV`, {
          restored: specs.size,
          invalid: stored.invalid.length,
          fromEnvironment: this.local.size,
          instances: counts.instances,
          kvIndex: this.kvIndex,
        });
        this.onApplied();
      },
      (err) => {
        this.log.warn(`start-up restore: ${err.message}; retrying`);
        onRetry?.(err);
      },
    );
  }

  /**
   * Marks a write of this replica to the shared specs as in flight; call the returned function
   * once the change is applied here, with the KV index the write landed at. Until then snapshots are
   * not applied (the local apply goes first, under its own trigger); afterwards a snapshot older
   * than the write is skipped: read before the write, it lacks it, and applying it would remove a
   * service just added or bring back one just removed.
   */
  beginOwnWrite(): (landedIndex: number | undefined) => void {
    if (this.writesInFlight++ === 0) this.writesDone = new Promise((resolve) => (this.releaseWrites = resolve));
    let done = false;
    return (landedIndex) => {
      if (done) return;
      done = true;
      if (landedIndex !== undefined) this.ownWrite = Math.max(this.ownWrite, landedIndex);
      if (--this.writesInFlight === 0) this.releaseWrites();
    };
  }

  startWatching(): void {
    this.watching = this.watch();
  }

  async stop(): Promise<void> {
    this.ctrl.abort();
    await this.watching;
  }

  /**
   * Waits until every live replica has applied the shared specs up to `index`. A replica list
   * Consul refuses fails at once: waiting would not make it readable. A list still empty at the
   * deadline (not even this replica's report) is unknown too, not "lagging" with no laggard named.
   */
  async waitForAll(index: number, timeoutMs: number): Promise<ReplicaReport[]> {
    const deadline = Date.now() + timeoutMs;
    const unknown = 'applied here, but whether every live replica applied it too is unknown: the replica list cannot be read';
    let laggards: string[] = [];
    for (;;) {
      const replicas = await listReplicas(this.consulForReplicas, this.replicaPrefix).catch((err: unknown) => {
        throw err instanceof ReplicasUnknownError ? new ReplicasUnknownError(err.reason, unknown) : err;
      });
      laggards = replicas.filter((r) => r.kvIndex < index).map((r) => r.id);
      if (laggards.length === 0 && replicas.length > 0) return replicas;
      if (Date.now() > deadline && replicas.length === 0) throw new ReplicasUnknownError(noReportsReason(this.replicaPrefix), unknown);
      if (Date.now() > deadline) throw new ReplicasLaggingError(laggards, timeoutMs);
      await sleep(20);
    }
  }

  /**
   * Follows the shared specs through the change log (consul/change-log.ts): a blocking read of the
   * log, then a read of only the specs it names since the index held here. The whole prefix is read
   * instead when the log cannot tell (a failure, an index gone backwards, a ring wrapped past what
   * is held here, an entry it does not know), when many services changed at once, when the blocking
   * read ends with no change (every CONSUL_WATCH_WAIT), and at least every fullReadEveryMs.
   *
   * If Consul comes back without its data (its index went backwards and specs this replica serves
   * are gone, e.g. a dev agent or a rebuilt cluster), the replica writes its specs back instead of
   * dropping every route: losing Consul's data must not take traffic down.
   */
  private async watch(): Promise<void> {
    const at: Following = { index: this.logIndex, highest: this.logIndex, held: this.kvIndex, hash: '', full: false, lastFull: Date.now() };
    await repeatWithBackoff(
      this.ctrl.signal,
      () =>
        this.followStep(at).catch((err: unknown) => {
          // Any failure reads everything again, without blocking; a failed apply is retried from
          // the same body and never reported as done.
          Object.assign(at, { index: 0, full: true });
          throw err;
        }),
      (err, retryInMs) => this.log.warn(`following shared specs: ${err.message}; retrying in about ${retryInMs} ms`),
    );
  }

  /** One blocking read of the change log and what follows from it. */
  private async followStep(at: Following): Promise<void> {
    const blocking = at.index > 0 && !at.full;
    const changes = await this.store.changes(blocking ? at.index : 0, this.waitSeconds, this.ctrl.signal);
    if (changes.index < at.highest) return this.lostState(at, changes.index);
    const verdict = changesSince(changes.log, at.held, this.incrementalLimit);
    // Reasons that hold for every reader of the log; the log's own doubts each reader judges
    // against what it holds.
    const forAll = at.full
      ? 'a read of everything is due'
      : blocking && changes.index === at.index
        ? 'no change within the wait'
        : Date.now() - at.lastFull >= this.fullReadEveryMs
          ? `no full read for ${Math.round(this.fullReadEveryMs / 1000)} s`
          : undefined;
    for (const r of this.logReaders) r.logged(forAll !== undefined ? { index: changes.index, full: forAll } : { index: changes.index, log: changes.log });
    const full = forAll ?? ('full' in verdict ? verdict.full : undefined);
    // Everything (a full read), or only the services the log names, each with its spec now.
    let stored: (StoredSpecs & { hash?: string }) | ReadonlyMap<string, ServiceSpec | undefined>;
    let index = changes.index;
    if (full !== undefined) {
      // Read after the log: it holds every change the log names up to its index, and maybe more.
      stored = await this.store.list();
      index = Math.max(index, stored.index);
      this.reads.full++;
      this.log.debug(`read every shared spec: ${full}`);
    } else {
      const names = 'services' in verdict ? verdict.services : new Set<string>();
      stored = names.size > 0 ? await this.store.refresh(names) : this.noChange;
      this.reads.logged++;
      this.reads.specsFetched += names.size;
    }
    const seenAt = performance.now();
    if (this.writesInFlight > 0) {
      // Seen, even if not applied yet: a restarted Consul whose index is below it has lost its state.
      at.highest = Math.max(at.highest, changes.index);
      // Once this replica's writes are live here, read the log again without blocking (index 0);
      // a full read that was due stays due.
      await this.writesDone;
      at.index = 0;
      at.full = full !== undefined;
      return;
    }
    at.highest = changes.index;
    at.index = changes.index;
    // Older than this replica's own write: the next read (already due, the index moved) has it.
    // Checked in the same tick as applySpecs reads the local state, so no write slips in between.
    if (changes.index < this.ownWrite) {
      at.full = full !== undefined;
      return;
    }
    at.full = false;
    if (full !== undefined) {
      at.lastFull = Date.now();
      // What HAProxy refused here may fit now (a port freed on the host, a limit raised): tried again.
      if (this.refusedSpecs.size > 0) {
        this.refusedSpecs.clear();
        at.hash = '';
      }
      this.forgetIdleRings(changes.log);
    }
    at.held = Math.max(at.held, index);
    if (stored === this.noChange || ('hash' in stored && stored.hash === at.hash)) {
      this.kvIndex = at.held;
      return;
    }
    if ('specs' in stored) {
      this.invalid = stored.invalid;
      await this.applySpecs(stored.specs, 'kv', false, this.instances, { source: 'kv', seenAt });
      at.hash = stored.hash ?? '';
    } else {
      this.invalid = this.store.invalidKeys();
      const specs = new Map<string, ServiceSpec>();
      for (const [name, spec] of stored) if (spec) specs.set(name, spec);
      await this.applySpecs(specs, 'kv', false, this.instances, { source: 'kv', seenAt }, new Set(stored.keys()));
      // A hash stands for the state of a full read only: after changes from the log it may equal a
      // later full read's hash while the state here differs.
      at.hash = '';
    }
    // The report published by onApplied carries kvIndex: set it first.
    this.kvIndex = at.held;
    this.onApplied();
  }

  /** The log named no service: nothing to read or apply. */
  private readonly noChange: ReadonlyMap<string, ServiceSpec | undefined> = new Map();

  /** The change log's index went backwards: see watch. */
  private async lostState(at: Following, index: number): Promise<void> {
    for (const r of this.logReaders) r.logged({ index, full: 'Consul lost its state', lost: true });
    const stored = await this.store.list();
    this.reads.full++;
    const current = [...this.reconciler.snapshot().services.values()];
    const lost = current.filter((spec) => !stored.specs.has(spec.serviceName) && this.local.get(spec.serviceName) !== spec);
    if (lost.length > 0) {
      // Create-only: a spec another replica already wrote back (or wrote anew) wins.
      this.log.warn(`Consul lost its state (index ${at.highest} -> ${index}); writing back ${lost.length} missing spec(s) from this replica`);
      for (const spec of lost) await this.store.create(spec);
    }
    Object.assign(at, { index: 0, highest: 0, held: 0, hash: '', full: true });
    // A new index space: indexes of writes to the lost one mean nothing here.
    this.ownWrite = 0;
  }

  /**
   * Deletes the rings of writers idle for an hour (gone replicas: a replica id names the host and
   * port, so every new container starts a ring). Any replica may do it; the deletes check-and-set.
   */
  private forgetIdleRings(log: ChangeLogRead['log']): void {
    for (const [writer, ring] of idleRings(log, this.store.writer)) {
      this.store
        .deleteRing(ring)
        .then((all) => this.log.debug(`deleted the idle change log of ${writer}${all ? '' : ' (some entries changed meanwhile and stay)'}`))
        .catch((err: unknown) => this.log.debug(`deleting the idle change log of ${writer}: ${(err as Error).message}`));
    }
  }

  /**
   * Brings the local desired state to exactly these specs: one batch, one apply. With `only`, to
   * these specs for those services alone (`shared` holds the ones still stored): the others are
   * left as they are, and the work is that of the named services, not of every one held.
   */
  private async applySpecs(
    shared: ReadonlyMap<string, ServiceSpec>,
    trigger: string,
    replaceAll: boolean,
    source: InstanceSource = this.instances,
    seen: Pick<SubmitOptions, 'source' | 'seenAt'> = {},
    only?: ReadonlySet<string>,
  ): Promise<{ instances: number }> {
    const current = this.reconciler.snapshot();
    let specs: ReadonlyMap<string, ServiceSpec>;
    let removedNames: string[];
    if (only === undefined) {
      specs = this.local.size === 0 ? shared : new Map([...this.local, ...shared]);
      removedNames = [...current.services.keys()].filter((name) => !specs.has(name));
    } else {
      const named = new Map<string, ServiceSpec>();
      for (const name of only) {
        const spec = shared.get(name) ?? this.local.get(name);
        if (spec) named.set(name, spec);
      }
      removedNames = [...only].filter((name) => current.services.has(name) && !named.has(name));
      // A removal may free the room a refused spec lacked: the refused ones come along (below).
      if (removedNames.length > 0) for (const spec of this.refusedSpecs) if (!only.has(spec.serviceName)) named.set(spec.serviceName, spec);
      specs = named;
    }
    // A removal may free the room a refused spec lacked: every refused one is tried again then.
    if (removedNames.length > 0) this.refusedSpecs.clear();
    const changed = [...specs.values()].filter((s) => {
      if (this.refusedSpecs.has(s)) return false;
      const have = current.services.get(s.serviceName);
      // The store hands back the same object for an entry it has parsed before: no serialising.
      return have === undefined || (have !== s && jsonOf(have) !== jsonOf(s));
    });
    const removed = removedNames;
    if (changed.length === 0 && removed.length === 0 && !replaceAll) return { instances: 0 };
    // Instances for new or changed specs; a failed read starts the service empty (503) and the
    // instance watch fills it in, rather than blocking every other service.
    const queue = [...changed];
    const marks = new Map(changed.map((s) => [s.serviceName, this.follower.mark(consulServiceName(s))]));
    const fresh = new Map<string, Awaited<ReturnType<InstanceSource['instances']>>>();
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        for (let s = queue.shift(); s !== undefined; s = queue.shift()) {
          const list = await source.instances(consulServiceName(s)).catch(() => undefined);
          if (list !== undefined) fresh.set(s.serviceName, list);
        }
      }),
    );
    const label = `${trigger}: ${changed.length} changed, ${removed.length} removed`;
    // A failed read keeps the instances already known (never "no instances"); the watch, kicked
    // below, reads again.
    const upsert = (state: DesiredState, specs: readonly ServiceSpec[]) =>
      withServices(
        state,
        specs.map((spec) => ({ spec, instances: fresh.get(spec.serviceName) })),
        (spec, err) => this.log.error(`shared spec ${spec.serviceName} cannot be applied here: ${err.message}`),
      );
    try {
      await this.reconciler.submit(label, (state: DesiredState) => upsert(withoutServices(state, removed), changed), seen);
      // Instances read one by one may be older than what the watch reported meanwhile (adopt
      // reads again then), and a failed read left the service as it was (read again). Those taken
      // from the watch's own model need neither.
      if (source === this.instances) {
        const held = this.reconciler.snapshot().instances;
        for (const spec of changed) {
          const name = consulServiceName(spec);
          const list = fresh.get(spec.serviceName);
          // Adopted only if the state holds that very list (the spec applied, and nothing replaced it since).
          if (list !== undefined && held.get(name) === list) this.follower.adopt(name, list, marks.get(spec.serviceName) ?? 0);
          else this.follower.kick(name);
        }
      }
    } catch (err) {
      // A refused config, or one HAProxy could not load (a TCP port taken on this host): one bad
      // spec must not hold back the others, nor every later change.
      if (!(err instanceof ConfigRejectedError) && !(err instanceof ReloadFailedError)) throw err;
      // One bad spec must not hold back the others: applied in parts (apply/in-parts.ts), edits
      // to live specs first. A refusal for file descriptors is a limit, not a bad spec: only the
      // specs without health checks (which need none) go on after it. Refused specs are
      // remembered (the same parsed objects) and not tried again until they change, a removal
      // frees room, or the next full read of the specs.
      this.log.error(`HAProxy refused the shared specs as a whole (${err.message}); applying them in parts`);
      await this.reconciler.submit(`${label} (removals)`, (state) => withoutServices(state, removed), seen);
      const refused: string[] = [];
      const attempt = async (part: readonly ServiceSpec[]): Promise<Error | undefined> => {
        const what = part.length === 1 ? `${trigger}: ${part[0]?.serviceName}` : `${trigger}: ${part.length} of the ${changed.length} changed`;
        try {
          await this.reconciler.submit(what, (state) => upsert(state, part), seen);
          return undefined;
        } catch (e) {
          if (!(e instanceof ConfigRejectedError) && !(e instanceof ReloadFailedError)) throw e;
          return e;
        }
      };
      const live = this.reconciler.snapshot().services;
      const ordered = [...changed.filter((s) => live.has(s.serviceName)), ...changed.filter((s) => !live.has(s.serviceName))];
      // The whole failed with `err` together with the removals; without them it needs a try of its own.
      const whole = removed.length === 0 ? err : await attempt(ordered);
      const out = whole === undefined ? [] : await applyInParts(ordered, whole, attempt, { ends: (e) => e instanceof FdLimitError, spares: (s) => s.skipCheck === true });
      // One line per refusal; the specs refused with it (past a descriptor limit) are named below.
      const logged = new Set<Error>();
      for (const { item: spec, error } of out) {
        refused.push(spec.serviceName);
        this.refusedSpecs.add(spec);
        if (logged.has(error)) continue;
        logged.add(error);
        this.log.error(`shared spec ${spec.serviceName} refused by HAProxy: ${error.message}`);
      }
      if (refused.length > 0) this.log.error(`${refused.length} of ${changed.length} shared specs are not applied here: ${refused.slice(0, 20).join(', ')}${refused.length > 20 ? ', …' : ''}`);
    }
    // Counted for the start-up restore's log line only (every instance held: not per change).
    return { instances: replaceAll ? [...this.reconciler.snapshot().instances.values()].reduce((n, list) => n + list.length, 0) : 0 };
  }
}

/** Where following the change log stands (see Fleet.followStep). */
interface Following {
  /** The log's index to block on; 0: read it without blocking. */
  index: number;
  /** The highest log index seen: one below it means Consul lost its state. */
  highest: number;
  /** The KV index of the specs applied here: log entries above it are news. */
  held: number;
  /** Hash of the last full read applied ('' after changes from the log). */
  hash: string;
  /** The next step reads every spec. */
  full: boolean;
  /** Date.now() of the last full read applied. */
  lastFull: number;
}
