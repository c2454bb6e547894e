import { ConfigRejectedError, FdLimitError, ShuttingDownError } from '../errors.js';
import { type DesiredState, EMPTY_STATE, serviceStates } from '../state/desired-state.js';
import { type ChangeSource, type Metrics, NO_METRICS, type RecentApply } from '../metrics/metrics.js';
import type { Logger } from '../util/log.js';
import type { ApplyRecord, ConfigApplier } from './applier.js';

export type Change = (state: DesiredState) => DesiredState;

export interface SubmitOptions {
  /** Reload even when the rendered config is unchanged (the `reload` endpoint). */
  readonly force?: boolean;
  /** The change carries a client's values: a config HAProxy rejects is then the client's 4xx. */
  readonly fromRequest?: boolean;
  /** Where the change came from: it is timed from `seenAt` until HAProxy serves it (dfp_propagation_seconds). */
  readonly source?: ChangeSource;
  /** `performance.now()` when the change was seen (the Consul answer arrived, the API accepted it); default: submit time. */
  readonly seenAt?: number;
}

interface Pending {
  readonly trigger: string;
  readonly change: Change;
  readonly options: SubmitOptions;
  readonly resolve: (r: ApplyRecord) => void;
  readonly reject: (e: unknown) => void;
  readonly seenAt: number;
}

/**
 * The single writer of the desired state. Changes queue up; whatever queued while an apply ran
 * goes out together in the next one (a burst costs one reload, and 200 concurrent reconfigures
 * cost a handful). If HAProxy rejects a batch, its changes are retried one by one so that only
 * the bad one fails. The state advances only when its config is live.
 */
export class Reconciler {
  private state: DesiredState = EMPTY_STATE;
  private queue: Pending[] = [];
  private running = false;
  private closed = false;

  constructor(
    private readonly applier: ConfigApplier,
    private readonly log: Logger,
    /** Called whenever a new state went live (the watcher follows its services). */
    private readonly onApplied: (state: DesiredState) => void = () => undefined,
    private readonly metrics: Metrics = NO_METRICS,
  ) {}

  snapshot(): DesiredState {
    return this.state;
  }

  submit(trigger: string, change: Change, options: SubmitOptions = {}): Promise<ApplyRecord> {
    if (this.closed) return Promise.reject(new ShuttingDownError());
    return new Promise((resolve, reject) => {
      this.queue.push({ trigger, change, options, resolve, reject, seenAt: options.seenAt ?? performance.now() });
      void this.pump();
    });
  }

  /** Refuses new changes and waits for the ones in flight. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.running) await new Promise((r) => setTimeout(r, 10));
  }

  private advance(next: DesiredState): void {
    const changed = next !== this.state;
    this.state = next;
    if (changed) this.onApplied(next);
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue;
        this.queue = [];
        await this.applyBatch(batch);
      }
    } finally {
      this.running = false;
    }
  }

  private async applyBatch(batch: Pending[]): Promise<void> {
    let next = this.state;
    const accepted: Pending[] = [];
    // The changes that alter the state: only they have something to propagate (a watch that
    // reports the same instances again, or a forced reload, does not).
    const effective = new Set<Pending>();
    for (const p of batch) {
      try {
        const before = next;
        next = p.change(next);
        accepted.push(p);
        if (next !== before) effective.add(p);
      } catch (err) {
        p.reject(err);
      }
    }
    if (accepted.length === 0) return;
    const force = accepted.some((p) => p.options.force);
    const trigger = accepted.length === 1 ? (accepted[0]?.trigger ?? '') : `${accepted.length} changes: ${[...new Set(accepted.map((p) => p.trigger))].join(', ')}`;
    if (next === this.state && !force && !this.applier.owesReload()) {
      // Nothing changed (an instance list Consul sent again, say): no render, no apply. Unless a
      // reload is owed: then any change, even none, is the chance to make HAProxy whole again.
      const record = this.applier.unchanged(trigger);
      this.observe(record, []);
      for (const p of accepted) p.resolve(record);
      return;
    }
    try {
      const record = await this.applier.apply(serviceStates(next), trigger, force);
      this.advance(next);
      this.observe(record, accepted.filter((p) => effective.has(p)));
      for (const p of accepted) p.resolve(record);
    } catch (err) {
      if (err instanceof ConfigRejectedError && accepted.length > 1) {
        this.log.warn(`HAProxy rejected a batch of ${accepted.length} changes; applying them one by one`);
        for (const p of accepted) await this.applyOne(p);
        return;
      }
      for (const p of accepted) p.reject(attribute(err, p));
    }
  }

  private async applyOne(p: Pending): Promise<void> {
    try {
      const next = p.change(this.state);
      const record = await this.applier.apply(serviceStates(next), p.trigger, p.options.force);
      const changed = next !== this.state;
      this.advance(next);
      this.observe(record, changed ? [p] : []);
      p.resolve(record);
    } catch (err) {
      p.reject(attribute(err, p));
    }
  }

  /** The apply is done and HAProxy serves it: time each change it made live from when it was seen. */
  private observe(record: ApplyRecord, live: readonly Pending[]): void {
    const now = performance.now();
    const propagation: { source: ChangeSource; ms: number }[] = [];
    for (const p of live) if (p.options.source !== undefined) propagation.push({ source: p.options.source, ms: now - p.seenAt });
    const recent: Omit<RecentApply, 'propagation'> = { generation: record.generation, kind: record.kind, trigger: record.trigger, durationMs: record.durationMs, at: record.at };
    this.metrics.applied(recent, propagation);
    const fields = {
      kind: record.kind,
      trigger: record.trigger,
      durationMs: round(record.durationMs),
      generation: record.generation,
      changes: live.length,
      ...(record.commands !== undefined ? { commands: record.commands } : {}),
      ...(record.reloadBecause ? { reloadBecause: record.reloadBecause } : {}),
      ...(record.fallback ? { fallback: record.fallback } : {}),
      ...propagationFields(propagation),
    };
    // Every apply, with its fields; the ones that changed nothing (a watch's repeated answer) at debug.
    if (record.kind === 'none') this.log.debug(`nothing to apply (${record.trigger})`, fields);
    else this.log.info(`applied generation ${record.generation} (${record.trigger}) ${record.kind === 'runtime' ? 'through the runtime API' : 'with a reload'} in ${fields.durationMs} ms`, fields);
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

/** The slowest propagation per source, as log fields (`propagationMs: {api: 12.3}`). */
function propagationFields(list: readonly { source: ChangeSource; ms: number }[]): Record<string, unknown> {
  if (list.length === 0) return {};
  const worst: Partial<Record<ChangeSource, number>> = {};
  for (const p of list) worst[p.source] = Math.max(worst[p.source] ?? 0, round(p.ms));
  return { propagationMs: worst };
}

/** The state before this change validated, so a rejection caused by a request's values is its 4xx. */
function attribute(err: unknown, p: Pending): unknown {
  if (err instanceof ConfigRejectedError && !(err instanceof FdLimitError) && p.options.fromRequest && !err.causedByRequest) {
    return new ConfigRejectedError(err.output, true);
  }
  return err;
}
