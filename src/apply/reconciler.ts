import { ConfigRejectedError, FdLimitError, ShuttingDownError } from '../errors.js';
import { type DesiredState, EMPTY_STATE, serviceStates } from '../state/desired-state.js';
import type { Logger } from '../util/log.js';
import type { ApplyRecord, ConfigApplier } from './applier.js';

export type Change = (state: DesiredState) => DesiredState;

export interface SubmitOptions {
  /** Reload even when the rendered config is unchanged (the `reload` endpoint). */
  readonly force?: boolean;
  /** The change carries a client's values: a config HAProxy rejects is then the client's 4xx. */
  readonly fromRequest?: boolean;
}

interface Pending {
  readonly trigger: string;
  readonly change: Change;
  readonly options: SubmitOptions;
  readonly resolve: (r: ApplyRecord) => void;
  readonly reject: (e: unknown) => void;
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
  ) {}

  snapshot(): DesiredState {
    return this.state;
  }

  submit(trigger: string, change: Change, options: SubmitOptions = {}): Promise<ApplyRecord> {
    if (this.closed) return Promise.reject(new ShuttingDownError());
    return new Promise((resolve, reject) => {
      this.queue.push({ trigger, change, options, resolve, reject });
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
    for (const p of batch) {
      try {
        next = p.change(next);
        accepted.push(p);
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
      for (const p of accepted) p.resolve(record);
      return;
    }
    try {
      const record = await this.applier.apply(serviceStates(next), trigger, force);
      this.advance(next);
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
      this.advance(next);
      p.resolve(record);
    } catch (err) {
      p.reject(attribute(err, p));
    }
  }
}

/** The state before this change validated, so a rejection caused by a request's values is its 4xx. */
function attribute(err: unknown, p: Pending): unknown {
  if (err instanceof ConfigRejectedError && !(err instanceof FdLimitError) && p.options.fromRequest && !err.causedByRequest) {
    return new ConfigRejectedError(err.output, true);
  }
  return err;
}
