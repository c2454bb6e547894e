import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { HaproxyProcess } from '../haproxy/process.js';
import { fdHardLimit, fdShortfall } from '../haproxy/fd-budget.js';
import { validateConfig } from '../haproxy/validate.js';
import { FdLimitError } from '../errors.js';
import { type BackendAllocation, MAP_FILES, MAP_NAMES, type MapName, patchConfig, type RenderedConfig, type RenderSettings, renderConfig, runtimeAddition } from '../render/haproxy-config.js';
import type { ServiceState } from '../state/service-state.js';
import type { Logger } from '../util/log.js';
import { canonicalAllocation, type DeltaPlan, deltaOps, reloadReasons, type RuntimeOp, runtimeAllocation, runtimeOps } from './plan.js';
import { runRuntimeOps } from './runtime.js';
import { type SlotTable, slotUsage } from '../render/slots.js';
import type { RouteConflict } from '../render/routes.js';
import { backendName, type Destination, routedSpec, type ServiceSpec } from '../spec/types.js';
import { certificatesFingerprint, type LiveRecord, LiveState, settingsHash } from './live-state.js';
import { CowMap } from '../util/cow-map.js';

export type ApplyKind = 'reload' | 'runtime' | 'none';

export interface ApplyRecord {
  readonly generation: number;
  readonly kind: ApplyKind;
  readonly trigger: string;
  /** From the start of the apply until the change is live (runtime commands done, or new worker up). */
  readonly durationMs: number;
  /**
   * The files' hash. A scale event's files are written just after its commands went out
   * (ConfigApplier.materialize): until then '' and then the hash of the files that include it.
   */
  readonly hash: string;
  readonly at: string;
  /** Why a change that looked runtime-only went through a reload. */
  readonly fallback?: string;
  /**
   * Why a change could not go through the runtime API (plan.ts reloadReasons): the config sections
   * that differ, `credentials file`, `no spare backend left`, sticky servers. Absent on forced reloads
   * (the trigger says why) and on fallbacks (see `fallback`).
   */
  readonly reloadBecause?: readonly string[];
  /** Runtime API commands sent (kind `runtime`). */
  readonly commands?: number;
}

export interface ApplierPaths {
  readonly stateDir: string;
  readonly config: string;
  /** The basic-auth userlists, loaded by HAProxy beside the config and never shown (mode 600). */
  readonly secrets: string;
  /** Where candidates are written and checked by `haproxy -c` before anything live changes. */
  readonly candidateDir: string;
}

export interface ApplyPreview {
  readonly kind: ApplyKind;
  readonly rendered: RenderedConfig;
  readonly ops: readonly RuntimeOp[];
  /** With kind `reload`: why the runtime API cannot make the change (see ApplyRecord.reloadBecause). */
  readonly reloadBecause: readonly string[];
}

interface RuntimePlan {
  readonly rendered: RenderedConfig;
  readonly allocation: BackendAllocation;
  readonly ops: RuntimeOp[];
}

type Files = { readonly config: string; readonly maps: Readonly<Record<MapName, string>>; readonly secrets: string };

/**
 * HAProxy serves files of an earlier run: a master taken over, or one started from the files on
 * disk. Until the first apply, which either keeps it as it is (the restored services render to the
 * very files it serves) or reloads it into the restored config.
 */
interface Inherited {
  readonly files: Files;
  readonly record: LiveRecord | undefined;
  /** HAProxy is known to serve `files` as they are (it was started from them by this run). */
  readonly servesFiles: boolean;
  /** Runtime API commands of the earlier run were not in the files yet (live-state.ts). */
  readonly runtimePending: boolean;
  /** certificatesFingerprint() when HAProxy was found or started. */
  readonly certificates: string;
  /** How HAProxy came to serve them, for the logs and the record. */
  readonly how: string;
}

/**
 * Turns desired state into live HAProxy config, the cheapest correct way:
 * - nothing changed in the rendered files: nothing happens;
 * - only slot addresses and map entries changed (scaling, a moved instance, a new route of a
 *   service on a spare backend): runtime API commands, no reload, and the same change written to
 *   the files. No `haproxy -c`: the skeleton is byte-identical to one that passed it, and every
 *   address and map entry passed our grammar (a check costs ~0.6 s of CPU at 10,000 services,
 *   which every later change would queue behind on a small machine);
 * - anything else: validate the candidate with `haproxy -c`, swap the files in atomically, reload
 *   and confirm; if the reload fails the previous files go back, so disk always matches what serves.
 * Callers serialise applies (apply/reconciler.ts); this class assumes one at a time.
 */
export class ConfigApplier {
  private live: RenderedConfig | undefined;
  private allocation: BackendAllocation | undefined;
  private generation = 0;
  private readonly history: ApplyRecord[] = [];
  /** Applies since start, by kind (the history above keeps only the last 50). */
  private readonly counts: Record<ApplyKind, number> = { reload: 0, runtime: 0, none: 0 };
  /** Set when runtime commands failed half-way or HAProxy restarted from old files: the next apply reloads. */
  private mustReload: string | undefined;

  /** `ulimit -Hn` of this process, which HAProxy inherits (haproxy/fd-budget.ts). */
  private readonly fdLimit = fdHardLimit();

  /** The newest files `haproxy -c` accepted, to fall back on when HAProxy cannot load the live ones. */
  private lastGood: Files | undefined;

  /**
   * The services of the last apply, by name: a scale event is planned against them from the
   * changed services alone (plan.ts deltaOps). Undefined when something besides the services
   * changed what is rendered (the certificate list), so the next apply renders.
   */
  private applied: ReadonlyMap<string, ServiceState> | undefined;

  /**
   * Set while `live` and the files on disk lag behind the last scale events, which went out through
   * the runtime API unrendered: the services to render them from. materialize() catches up, off the
   * change's path, before anything reads `live` or HAProxy could load the files.
   */
  private lagging: readonly ServiceState[] | undefined;
  /** The services whose backends differ from `live` while files lag: materialize() renders only them. */
  private lagTouched = new Set<string>();
  private lagSince = 0;
  private materializeTimer: NodeJS.Timeout | undefined;

  /** The route tables as live in HAProxy (the last render's, plus the entries of services added since). */
  private tables: Readonly<Record<MapName, ReadonlyMap<string, string>>> | undefined;

  /** Called when lagging files have been written (the replica report then carries their hash). */
  onMaterialized: () => void = () => undefined;

  /** What HAProxy serves, recorded in STATE_DIR for the next start (live-state.ts). */
  private readonly liveState: LiveState;
  private readonly settingsKey: string;
  private inherited: Inherited | undefined;

  constructor(
    private readonly haproxyBin: string,
    private readonly haproxy: HaproxyProcess,
    private readonly settings: Omit<RenderSettings, 'mapDir'>,
    private readonly paths: ApplierPaths,
    private readonly log: Logger,
    private readonly minSpares = 16,
  ) {
    haproxy.onRestartFailure(() => this.restoreLastGood());
    haproxy.onBeforeRestart(() => this.materialize());
    this.liveState = new LiveState(paths);
    this.settingsKey = settingsHash(settings);
  }

  /**
   * HAProxy died and will not start from the live files (a file damaged on disk, or one a runtime
   * apply wrote, which no `haproxy -c` has read): put the last validated files back, and
   * make the next apply a full reload so the in-memory state and HAProxy meet again.
   */
  private restoreLastGood(): void {
    if (!this.lastGood) return;
    this.log.warn('restoring the last config that passed haproxy -c');
    this.writeLive(this.lastGood, true);
    // The reload owed below renders everything anew; lagging files must not overwrite these meanwhile.
    this.lagging = undefined;
    this.lagTouched = new Set();
    clearTimeout(this.materializeTimer);
    this.materializeTimer = undefined;
    this.mustReload = 'HAProxy was restarted from the last validated config';
    this.afterRecovery();
  }

  /** Set by the owner: bring HAProxy back to the desired state once it runs the last good config. */
  afterRecovery: () => void = () => undefined;
  /** Set by the owner (metrics): an apply's reload failed, at `haproxy -c` or at the reload itself. */
  onReloadFailure: (stage: 'check' | 'reload') => void = () => undefined;
  /** Set by the owner (metrics): runtime commands failed and the change went out as a reload. */
  onRuntimeFallback: () => void = () => undefined;

  render(services: readonly ServiceState[], allocation?: BackendAllocation, mapDir = this.paths.stateDir): RenderedConfig {
    return renderConfig(this.renderSettings(mapDir), services, allocation);
  }

  private renderSettings(mapDir = this.paths.stateDir): RenderSettings {
    return { ...this.settings, mapDir, crtList: this.crtList ?? this.settings.crtList };
  }

  // --- certificates (src/certs) ------------------------------------------------------------------

  /** The crt-list TLS binds load; set by the certificate manager once a certificate exists. */
  private crtList: string | undefined;
  private exclusiveChain: Promise<unknown> = Promise.resolve();

  /** Takes effect with the next apply (the TLS binds appear or go). */
  setCrtList(file: string | undefined): void {
    // Files lagging behind scale events are written with the list they were planned under.
    this.materialize();
    this.crtList = file;
    this.applied = undefined;
    this.lastPlan = undefined;
    this.verdicts.clear();
    this.verdictEpoch++;
  }

  /**
   * Runs `fn` while no apply is in progress (and holds applies back until it ends), so runtime
   * commands it sends reach the current worker and not one a reload is about to replace.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.exclusiveChain.then(
      () => fn(),
      () => fn(),
    );
    this.exclusiveChain = run.catch(() => undefined);
    return run;
  }

  /** Writes and validates the first config, before HAProxy starts. */
  async init(services: readonly ServiceState[]): Promise<void> {
    this.inherited = undefined;
    const allocation = this.canonical(services);
    await this.validate(services, allocation, this.paths.candidateDir, false);
    const rendered = this.render(services, allocation);
    this.writeLive(rendered, true);
    this.live = rendered;
    this.tables = rendered.tables;
    this.lastGood = rendered;
    this.allocation = allocation;
    this.applied = byName(services);
    this.served();
    this.record({ kind: 'reload', trigger: 'start', durationMs: 0 }, rendered);
  }

  /**
   * HAProxy left serving by the previous run is taken over: its files stay as they are on disk
   * until the first apply. Called before anything at start-up writes certificate files. False when
   * the live files are missing (nothing to restart it from if it died: replace it instead).
   */
  takeOver(how: string): boolean {
    const files = this.liveState.readFiles();
    if (files === undefined) return false;
    this.inherit({
      files,
      record: this.liveState.readRecord(),
      servesFiles: false,
      runtimePending: this.liveState.pendingRuntime(),
      certificates: certificatesFingerprint(files.config),
      how,
    });
    this.record({ kind: 'none', trigger: `start: ${how}`, durationMs: 0 }, files);
    return true;
  }

  /**
   * No HAProxy is running: start it from the files the last run left, so its routes serve from
   * the first moment rather than after the restore (Consul KV, the instances). Only files rendered
   * with the same settings, and that `haproxy -c` accepts; false otherwise (then init()).
   */
  async resumeFromDisk(): Promise<boolean> {
    const files = this.liveState.readFiles();
    const record = this.liveState.readRecord();
    if (files === undefined || record === undefined) return false;
    if (record.settings !== this.settingsKey) {
      this.log.info('the settings changed since the last run: HAProxy starts with an empty config until the restore');
      return false;
    }
    try {
      this.validations++;
      await validateConfig(this.haproxyBin, [this.paths.config, this.paths.secrets]);
    } catch (err) {
      this.log.warn(`the files of the last run do not pass haproxy -c (${(err as Error).message}): HAProxy starts with an empty config until the restore`);
      return false;
    }
    this.inherit({ files, record, servesFiles: true, runtimePending: false, certificates: certificatesFingerprint(files.config), how: 'started from the files of the last run' });
    this.record({ kind: 'reload', trigger: 'start from the files of the last run', durationMs: 0 }, files);
    return true;
  }

  private inherit(inherited: Inherited): void {
    this.inherited = inherited;
    this.written = inherited.files;
    this.lastGood = inherited.files;
  }

  /**
   * The first apply after HAProxy was inherited. If the restored services, rendered with the
   * allocation of the files HAProxy serves, give those very files, HAProxy is kept as it is: no
   * reload, the same worker, its slots as they are. Otherwise one reload (seamless: the master
   * hands its listeners to the new worker) into the restored config, slot holders kept.
   */
  private async firstApplyOnInherited(inherited: Inherited, services: readonly ServiceState[], trigger: string, started: number, force: boolean): Promise<ApplyRecord> {
    this.inherited = undefined;
    const record = inherited.record;
    let why = force ? 'forced' : this.whyNotAsIs(inherited);
    if (why === undefined && record !== undefined) {
      const rendered = this.render(services, record.allocation);
      if (hashOf(rendered) === hashOf(inherited.files)) {
        this.live = rendered;
        this.tables = rendered.tables;
        this.lastGood = rendered;
        this.allocation = record.allocation;
        this.applied = byName(services);
        this.mustReload = undefined;
        this.served();
        this.log.info(`HAProxy ${inherited.how} already serves the restored config: kept as it is, no reload`);
        return this.record({ kind: 'none', trigger: `${trigger} (HAProxy ${inherited.how} serves it already)`, durationMs: performance.now() - started }, rendered);
      }
      why = 'the restored services differ from the files it serves';
    }
    // Slot holders stay where they are in the files HAProxy serves (sticky cookies name slots).
    this.allocation = record?.allocation;
    const because = `HAProxy ${inherited.how}: ${why ?? 'no record of what it serves'}`;
    this.log.info(`${because}; reloading it into the restored config`);
    return this.reload(services, trigger, started, force, undefined, [because]);
  }

  /** Why the inherited HAProxy cannot be assumed to serve its files as recorded, if it cannot. */
  private whyNotAsIs(inherited: Inherited): string | undefined {
    const record = inherited.record;
    if (record === undefined) return `no record of what it serves (${path.basename(this.paths.stateDir)}/haproxy-live.json)`;
    if (record.settings !== this.settingsKey) return 'the settings changed';
    if (!inherited.servesFiles && record.hash !== hashOf(inherited.files)) return 'the files on disk are not the ones it was last confirmed to serve (a reload was under way)';
    if (!inherited.servesFiles && inherited.runtimePending) return 'runtime API changes were under way';
    if (certificatesFingerprint(inherited.files.config) !== inherited.certificates) return 'certificate files changed';
    return undefined;
  }

  /**
   * Records that the files on disk are what HAProxy serves (live-state.ts), when they are: no
   * runtime commands ahead of them, no reload owed.
   */
  private served(): void {
    if (this.live === undefined || this.allocation === undefined || this.lagging !== undefined || this.mustReload !== undefined) return;
    try {
      this.liveState.markServed(hashOf(this.live), this.settingsKey, this.allocation);
    } catch (err) {
      this.log.warn(`recording what HAProxy serves failed: ${(err as Error).message}; the next start reloads HAProxy once`);
    }
  }

  /**
   * Sends runtime commands. A HAProxy that restarted meanwhile (from the files, which do not hold
   * these commands yet) may have missed some: that is a failure, and the caller reloads.
   */
  private async runOps(ops: readonly RuntimeOp[]): Promise<void> {
    const restarts = this.haproxy.status().restarts;
    await runRuntimeOps(this.haproxy, ops, this.mapFiles());
    if (this.haproxy.status().restarts !== restarts) throw new Error('HAProxy restarted while the commands went out');
  }

  /** Runtime commands are about to go out ahead of the files. */
  private runtimeAhead(): void {
    try {
      this.liveState.markRuntimePending();
    } catch (err) {
      this.log.warn(`marking runtime changes in flight failed: ${(err as Error).message}`);
    }
  }

  liveConfig(): string | undefined {
    this.materialize();
    return this.live?.config;
  }

  liveFiles(): RenderedConfig | undefined {
    this.materialize();
    return this.live;
  }

  /**
   * The route conflicts of the live config, without rendering what lags: a scale event changes no
   * route, and a service added through the runtime API only brings keys new to the live tables
   * (plan.ts deltaOps), so the conflicts of the last render are exactly those live now.
   */
  liveConflicts(): readonly RouteConflict[] {
    return this.live?.conflicts ?? [];
  }

  records(): readonly ApplyRecord[] {
    return this.history;
  }

  totals(): Readonly<Record<ApplyKind, number>> {
    return this.counts;
  }

  /** `quick`: no rendering; while the files of a scale event are being written, the hash is ''. */
  current(quick = false): { generation: number; hash: string } {
    if (!quick) this.materialize();
    return { generation: this.generation, hash: this.live && !this.lagging ? hashOf(this.live) : '' };
  }

  /**
   * Renders and writes the files the last scale events left lagging (see `lagging`). Cheap when
   * nothing lags. Runs by itself shortly after a burst of scale events, and before anything that
   * reads the live files or the config.
   */
  materialize(): void {
    const services = this.lagging;
    if (services === undefined || this.allocation === undefined) return;
    clearTimeout(this.materializeTimer);
    this.materializeTimer = undefined;
    // Only the backends of the services the scale events touched are rendered anew.
    const patched =
      this.live && this.applied && this.tables
        ? patchConfig(this.renderSettings(), this.live, this.applied, this.lagTouched, this.allocation, this.tables)
        : undefined;
    const rendered = patched ?? this.render(services, this.allocation);
    this.fileWrites[patched ? 'patched' : 'rendered']++;
    this.writeLive(rendered);
    this.live = rendered;
    this.tables = rendered.tables;
    this.lagging = undefined;
    this.lagTouched = new Set();
    this.lastPlan = undefined;
    this.served();
    const hash = hashOf(rendered);
    for (const r of this.history) if (r.hash === '') (r as { hash: string }).hash = hash;
    this.onMaterialized();
  }

  /** Files written by materialize() since start, by how they were made (status, tests). */
  readonly fileWrites = { patched: 0, rendered: 0 };

  /** Writes lagging files now (before a stop, so the next start finds them current). */
  flush(): Promise<void> {
    return this.exclusive(async () => this.materialize());
  }

  /**
   * Soon after the last of a burst of scale events (one render for the burst), and at most a second
   * after the first, so the files never lag long.
   */
  private scheduleMaterialize(): void {
    const now = performance.now();
    if (this.materializeTimer === undefined) this.lagSince = now;
    clearTimeout(this.materializeTimer);
    const delay = Math.max(0, Math.min(MATERIALIZE_QUIET_MS, this.lagSince + MATERIALIZE_MAX_LAG_MS - now));
    this.materializeTimer = setTimeout(() => {
      this.materializeTimer = undefined;
      this.flush().catch((err: unknown) => this.log.error(`writing the config after scale events failed: ${(err as Error).message}`));
    }, delay);
    this.materializeTimer.unref();
  }

  private prechecks = 0;

  /**
   * Would HAProxy accept these services? Runtime-only changes need no `haproxy -c` (see apply);
   * anything else is validated in a directory of its own, so concurrent requests do not collide.
   */
  async precheck(services: readonly ServiceState[]): Promise<void> {
    if (!this.needsPrecheck(services)) return;
    const dir = path.join(this.paths.candidateDir, `precheck-${++this.prechecks}`);
    try {
      await this.validate(services, this.canonical(services), dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /** False when these services go out through the runtime API (nothing HAProxy could refuse). */
  needsPrecheck(services: readonly ServiceState[]): boolean {
    if (this.mustReload === undefined && this.delta(services) !== undefined) return false;
    return !('ops' in this.runtimePlan(services));
  }

  /**
   * The change as scale events and services added through the runtime API, planned from the
   * changed services alone (plan.ts deltaOps), or undefined when it needs the general path.
   */
  private delta(services: readonly ServiceState[]): DeltaPlan | undefined {
    if (this.applied === undefined || this.allocation === undefined || this.live === undefined || this.tables === undefined) return undefined;
    // Asked twice per change (precheck, apply) with the same services (serviceStates keeps one
    // array per state): ~24 ms each at 10,000 services. What it was made from is held weakly.
    const last = this.lastDelta;
    const from = [this.applied, this.allocation, this.live, this.tables] as const;
    if (last && last.crtList === this.crtList && last.services.deref() === services && last.from.every((r, i) => r.deref() === from[i])) return last.plan;
    const settings = this.renderSettings();
    const plan = deltaOps(this.applied, services, this.allocation, this.settings.serverSlots, {
      add: (spec, nameOf, slotsOf) => runtimeAddition(settings, spec, nameOf, slotsOf, this.allocation?.spareChecks ?? true),
      tables: this.tables,
      lookups: new Set(this.live.lookups),
    });
    this.lastDelta = { crtList: this.crtList, services: new WeakRef(services), from: from.map((r) => new WeakRef<object>(r)), plan };
    return plan;
  }

  private lastDelta: { readonly crtList: string | undefined; readonly services: WeakRef<readonly ServiceState[]>; readonly from: readonly WeakRef<object>[]; readonly plan: DeltaPlan | undefined } | undefined;

  /** What applying these services would do, without doing it (dry runs). */
  preview(services: readonly ServiceState[]): ApplyPreview {
    const runtime = this.mustReload === undefined ? this.runtimePlan(services) : { reasons: [this.mustReload] };
    if ('ops' in runtime) return { kind: runtime.ops.length === 0 ? 'none' : 'runtime', rendered: runtime.rendered, ops: runtime.ops, reloadBecause: [] };
    const rendered = this.render(services, this.canonical(services));
    const none = this.mustReload === undefined && this.live !== undefined && hashOf(rendered) === hashOf(this.live);
    return none ? { kind: 'none', rendered, ops: [], reloadBecause: [] } : { kind: 'reload', rendered, ops: [], reloadBecause: runtime.reasons };
  }

  /** A reload is owed (runtime commands failed half-way, or HAProxy restarted from older files). */
  owesReload(): boolean {
    return this.mustReload !== undefined;
  }

  /** The record of an apply that had nothing to do: the live files already say it. */
  unchanged(trigger: string): ApplyRecord {
    this.counts.none++;
    return { generation: this.generation, kind: 'none', trigger, durationMs: 0, hash: this.live && !this.lagging ? hashOf(this.live) : '', at: new Date().toISOString() };
  }

  apply(services: readonly ServiceState[], trigger: string, force = false): Promise<ApplyRecord> {
    return this.exclusive(() => this.applyNow(services, trigger, force));
  }

  private async applyNow(services: readonly ServiceState[], trigger: string, force: boolean): Promise<ApplyRecord> {
    const started = performance.now();
    if (this.inherited) return this.firstApplyOnInherited(this.inherited, services, trigger, started, force);
    let fallback: string | undefined = force ? undefined : this.mustReload;
    let reasons: readonly string[] | undefined;
    if (!force && fallback === undefined) {
      const quick = this.delta(services);
      if (quick !== undefined && quick.ops.length === 0 && quick.allocation === this.allocation) {
        // The same slots at the same addresses: the files would not change either.
        this.applied = quick.byName;
        if (this.lagging) {
          this.lagging = services;
          for (const name of quick.touched) this.lagTouched.add(name);
        }
        return this.unchanged(trigger);
      }
      if (quick !== undefined) {
        try {
          const crtList = this.crtList;
          await this.haproxy.whenUp();
          this.runtimeAhead();
          await this.runOps(quick.ops);
          // The frontend stays as rendered: its lookups are kept through to the next render.
          this.allocation = quick.allocation === this.allocation ? quick.allocation : { ...quick.allocation, lookups: this.live?.lookups ?? [] };
          this.applied = quick.byName;
          this.tables = withEntries(this.tables, quick.entries);
          this.lagging = services;
          for (const name of quick.touched) this.lagTouched.add(name);
          // The certificate list changed while the commands went out: the files are rendered
          // whole (materialize patches only over the head they were planned with).
          if (this.crtList !== crtList) this.applied = undefined;
          this.lastPlan = undefined;
          this.scheduleMaterialize();
          // Logged by the reconciler, with where its changes came from.
          return this.record({ kind: 'runtime', trigger, durationMs: performance.now() - started, commands: quick.ops.length }, undefined);
        } catch (err) {
          fallback = `runtime API failed: ${(err as Error).message}`;
          this.mustReload = fallback;
          this.onRuntimeFallback();
          this.log.warn(`${fallback}; reloading instead`);
        }
      }
    }
    if (!force && fallback === undefined) {
      const runtime = this.runtimePlan(services);
      const plan = 'ops' in runtime ? runtime : undefined;
      if (!('ops' in runtime)) reasons = runtime.reasons;
      // No command and the same files: nothing to do. No command but other files (an instance
      // replaced by another on the same address: only the slot's comment changes) still writes them.
      if (plan && plan.ops.length === 0 && this.live && hashOf(plan.rendered) === hashOf(this.live)) {
        // The same files from other objects (a reconfigure that repeats a spec): the next scale event is planned against these.
        this.applied = byName(services);
        return this.unchanged(trigger);
      }
      if (plan) {
        try {
          await this.haproxy.whenUp();
          this.runtimeAhead();
          await this.runOps(plan.ops);
          this.writeLive(plan.rendered);
          this.live = plan.rendered;
          this.tables = plan.rendered.tables;
          this.allocation = plan.allocation;
          this.applied = byName(services);
          this.served();
          // Logged by the reconciler, with where its changes came from.
          return this.record({ kind: 'runtime', trigger, durationMs: performance.now() - started, commands: plan.ops.length }, plan.rendered);
        } catch (err) {
          fallback = `runtime API failed: ${(err as Error).message}`;
          // Commands already sent are live: until a reload succeeds, the next apply must reload.
          this.mustReload = fallback;
          this.onRuntimeFallback();
          this.log.warn(`${fallback}; reloading instead`);
        }
      }
    }
    return this.reload(services, trigger, started, force, fallback, reasons);
  }

  /**
   * The last plan and what it was made from: a reconfigure asks for the plan twice (precheck, then
   * apply) and rendering every service is the dominant cost of a change, so the second ask is free
   * when nothing moved in between. Specs and instance lists are immutable, so references suffice.
   * The live config and allocation it was made against are held weakly: once either is replaced
   * the plan can never be asked for again, and holding the old config would keep a second copy of
   * everything rendered (~11 MB at 10,000 services, measured in a heap snapshot).
   */
  private lastPlan:
    | { readonly refs: readonly unknown[]; readonly live: WeakRef<RenderedConfig>; readonly allocation: WeakRef<BackendAllocation>; readonly plan: RuntimePlan | { reasons: readonly string[] } }
    | undefined;

  /** The runtime API commands for these services, or why there are none (a reload is needed). */
  private runtimePlan(services: readonly ServiceState[]): RuntimePlan | { reasons: readonly string[] } {
    this.materialize();
    if (!this.live || !this.allocation) return { reasons: ['no live config yet'] };
    const refs = services.flatMap((s) => [s.spec, s.instances]);
    const last = this.lastPlan;
    if (last && last.live.deref() === this.live && last.allocation.deref() === this.allocation && last.refs.length === refs.length && last.refs.every((r, i) => r === refs[i])) {
      return last.plan;
    }
    this.lastPlan = undefined;
    const plan = this.planFor(services, this.live, this.allocation);
    this.lastPlan = { refs, live: new WeakRef(this.live), allocation: new WeakRef(this.allocation), plan };
    return plan;
  }

  private planFor(services: readonly ServiceState[], live: RenderedConfig, previous: BackendAllocation): RuntimePlan | { reasons: readonly string[] } {
    const fresh = runtimeAllocation(previous, services, this.settings.serverSlots);
    if (typeof fresh === 'string') return { reasons: [fresh] };
    // The live frontend's lookups stay (a removed route's kind costs no reload); new kinds are added.
    const allocation = { ...fresh, lookups: live.lookups };
    const rendered = this.render(services, allocation);
    const ops = runtimeOps(live, rendered);
    if (ops) return { rendered, allocation, ops };
    const keys = new Map([...allocation.names].map(([key, name]) => [name, key]));
    return { reasons: reloadReasons(live, rendered, keys) };
  }

  private async reload(
    services: readonly ServiceState[],
    trigger: string,
    started: number,
    force: boolean,
    fallback: string | undefined,
    reasons: readonly string[] | undefined = undefined,
  ): Promise<ApplyRecord> {
    this.materialize();
    const allocation = this.canonical(services);
    const rendered = this.render(services, allocation);
    if (!force && fallback === undefined && this.live !== undefined && hashOf(rendered) === hashOf(this.live)) {
      this.applied = byName(services);
      return this.unchanged(trigger);
    }
    try {
      await this.validate(services, allocation, this.paths.candidateDir, !force);
    } catch (err) {
      this.onReloadFailure('check');
      throw err;
    }
    // After a takeover nothing is live in memory yet: the files HAProxy was found serving are.
    const previous = this.live ?? this.lastGood;
    this.writeLive(rendered);
    try {
      const restarts = this.haproxy.status().restarts;
      await this.haproxy.reload(reloadTimeout(rendered.config));
      // Restarted meanwhile (from the last good files): this config is not what serves.
      if (this.haproxy.status().restarts !== restarts) throw new Error('HAProxy restarted during the reload');
    } catch (err) {
      if (previous) this.writeLive(previous);
      // The old worker serves on, from the files just put back.
      this.served();
      // Unless a new worker came up after all, late: the next apply reloads rather than trust the
      // allocation and route tables of the files put back.
      this.mustReload = `the last reload failed: ${(err as Error).message}`;
      this.onReloadFailure('reload');
      this.log.error(`reload failed, previous config restored: ${(err as Error).message}`, { trigger });
      throw err;
    }
    this.live = rendered;
    this.tables = rendered.tables;
    this.lastGood = rendered;
    this.allocation = allocation;
    this.applied = byName(services);
    this.mustReload = undefined;
    this.served();
    return this.record(
      { kind: 'reload', trigger, durationMs: performance.now() - started, ...(fallback ? { fallback } : {}), ...(reasons && reasons.length > 0 ? { reloadBecause: reasons } : {}) },
      rendered,
    );
  }

  /**
   * Candidates `haproxy -c` accepted lately (verdictKey -> when): a reload right after the
   * reconfigure's precheck of the same files need not ask again (one check, not two, on the path
   * of a new service). Kept a minute at most, forgotten when the certificate list changes; forced
   * reloads always ask (the certificate files they load may have changed).
   */
  private readonly verdicts = new Map<string, number>();
  private verdictEpoch = 0;
  /** `haproxy -c` runs in flight, by verdictKey. */
  private readonly checking = new Map<string, Promise<void>>();

  private async validate(services: readonly ServiceState[], allocation: BackendAllocation, dir: string, reuse = true): Promise<void> {
    const candidate = this.render(services, allocation, dir);
    const short = fdShortfall(candidate, this.settings.maxconn, this.fdLimit);
    if (short !== undefined) throw new FdLimitError(short);
    const key = reuse ? verdictKey(candidate, dir) : undefined;
    const passed = () => {
      const at = key === undefined ? undefined : this.verdicts.get(key);
      return at !== undefined && Date.now() - at < VERDICT_TTL_MS;
    };
    if (passed()) return;
    // The same check already running (concurrent prechecks of one change): its verdict, not a second run.
    // A verdict reached while the certificate list changed is not kept (the files it read differ).
    const epoch = this.verdictEpoch;
    const running = key === undefined ? undefined : this.checking.get(key);
    if (running !== undefined) {
      try {
        await running;
      } catch (err) {
        // Refused: refused for this candidate too, unless the certificates changed meanwhile.
        if (epoch === this.verdictEpoch) throw err;
      }
      if (passed()) return;
    }
    mkdirSync(dir, { recursive: true });
    for (const name of MAP_NAMES) writeFileSync(path.join(dir, MAP_FILES[name]), candidate.maps[name]);
    const file = path.join(dir, 'haproxy.cfg');
    const secrets = path.join(dir, path.basename(this.paths.secrets));
    writeFileSync(file, candidate.config);
    writeFileSync(secrets, candidate.secrets, { mode: 0o600 });
    this.validations++;
    const check = validateConfig(this.haproxyBin, [file, secrets]);
    if (key !== undefined) this.checking.set(key, check);
    try {
      await check;
    } finally {
      if (key !== undefined && this.checking.get(key) === check) this.checking.delete(key);
    }
    if (key === undefined || epoch !== this.verdictEpoch) return;
    this.verdicts.delete(key);
    this.verdicts.set(key, Date.now());
    for (const old of this.verdicts.keys()) {
      if (this.verdicts.size <= 8) break;
      this.verdicts.delete(old);
    }
  }

  /** `haproxy -c` runs since start (tests). */
  validations = 0;

  /** Server slots in use and in total, over every backend. */
  slotUsage(): { used: number; total: number } {
    return slotUsage(this.allocation?.slots.values() ?? []);
  }

  /**
   * The HAProxy backends of a service as HAProxy serves them now (a spare's name until the next
   * reload) with their slot holders; no rendering, so a dashboard may ask every second.
   */
  backendsOf(spec: ServiceSpec): { readonly name: string; readonly dest: Destination; readonly slots: SlotTable | undefined }[] {
    return routedSpec(spec).destinations.map((dest) => {
      const key = backendName(spec, dest);
      const name = this.allocation?.names.get(key) ?? key;
      return { name, dest, slots: this.allocation?.slots.get(name) };
    });
  }

  /** The allocation of a reload: canonical names, slot holders kept from the live one. */
  private canonical(services: readonly ServiceState[]): BackendAllocation {
    return canonicalAllocation(services, this.minSpares, this.settings.serverSlots, this.allocation);
  }

  mapFiles(): Record<MapName, string> {
    return Object.fromEntries(MAP_NAMES.map((m) => [m, path.join(this.paths.stateDir, MAP_FILES[m])])) as Record<MapName, string>;
  }

  /** What the last writeLive put on disk: files whose text is unchanged are not written again. */
  private written: Files | undefined;

  /** `all`: every file, whatever was written before (a file on disk may be damaged). */
  private writeLive(files: Files, all = false): void {
    const before = all ? undefined : this.written;
    const atomic = (file: string, text: string, was: string | undefined, mode = 0o644) => {
      if (text === was) return;
      const tmp = `${file}.tmp`;
      writeFileSync(tmp, text, { mode });
      renameSync(tmp, file);
    };
    const maps = this.mapFiles();
    this.written = undefined;
    for (const name of MAP_NAMES) atomic(maps[name], files.maps[name], before?.maps[name]);
    atomic(this.paths.secrets, files.secrets, before?.secrets, 0o600);
    atomic(this.paths.config, files.config, before?.config);
    this.written = files;
  }

  /** `files` undefined: not rendered yet (a scale event); materialize() fills the hash in. */
  private record(r: Pick<ApplyRecord, 'kind' | 'trigger' | 'durationMs' | 'fallback' | 'reloadBecause' | 'commands'>, files: Files | undefined): ApplyRecord {
    const record: ApplyRecord = { generation: ++this.generation, ...r, hash: files ? hashOf(files) : '', at: new Date().toISOString() };
    this.counts[r.kind]++;
    this.history.push(record);
    if (this.history.length > 50) this.history.shift();
    return record;
  }
}

/** Rendered files are immutable: each is hashed once (replica reports ask on every apply). */
const hashes = new WeakMap<Files, string>();

export function hashOf(files: Files): string {
  let hash = hashes.get(files);
  if (hash === undefined) {
    hash = computeHash(files);
    hashes.set(files, hash);
  }
  return hash;
}

function computeHash(files: Files): string {
  const h = createHash('sha256').update(files.config);
  for (const name of MAP_NAMES) h.update(`\0${name}\0`).update(files.maps[name]);
  h.update('\0secrets\0').update(files.secrets);
  return h.digest('hex').slice(0, 16);
}

const VERDICT_TTL_MS = 60_000;
/**
 * Scale events write their files this long after the last one of a burst… (300 ms: events a few
 * hundred ms apart, as in a rolling update, write the files about once a second instead of after
 * each one; a write patches the touched backends in, but still joins, hashes and writes every
 * byte: ~50 ms of CPU at 10,000 services, profiled.)
 */
const MATERIALIZE_QUIET_MS = 300;
/** …and never later than this after the first. */
const MATERIALIZE_MAX_LAG_MS = 1000;

/** The tables with these entries added, copy-on-write (a route table holds every service's routes). */
function withEntries(
  tables: Readonly<Record<MapName, ReadonlyMap<string, string>>> | undefined,
  entries: readonly { readonly map: MapName; readonly key: string; readonly value: string }[],
): Readonly<Record<MapName, ReadonlyMap<string, string>>> | undefined {
  if (tables === undefined || entries.length === 0) return tables;
  const out = { ...tables } as Record<MapName, ReadonlyMap<string, string>>;
  const copied = new Set<MapName>();
  for (const e of entries) {
    if (!copied.has(e.map)) {
      out[e.map] = CowMap.edit(out[e.map]);
      copied.add(e.map);
    }
    (out[e.map] as Map<string, string>).set(e.key, e.value);
  }
  return out;
}

function byName(services: readonly ServiceState[]): Map<string, ServiceState> {
  return new Map(services.map((s) => [s.spec.serviceName, s]));
}

/**
 * What `haproxy -c` judges of a candidate: its skeleton (the config with every server slot's
 * address left out), maps and secrets, with the directory it was checked in left out (prechecks
 * use their own). Candidates that differ only in slot addresses share a verdict, by the reasoning
 * that lets scale events go out with no check at all: every address passed the proxy's grammar,
 * and the rest is byte-identical. So a reload whose instances moved since its precheck, or a
 * precheck of one service's new instances, needs no second check.
 */
function verdictKey(files: RenderedConfig, dir: string): string {
  return computeHash({ config: files.skeleton.replaceAll(dir, '\0dir\0'), maps: files.maps, secrets: files.secrets });
}

/** Parsing time grows with config size (~1.2 s at 2 MB on 2 cores); allow generously more. */
function reloadTimeout(config: string): number {
  return 10_000 + Math.ceil(config.length / 1000) * 10;
}
