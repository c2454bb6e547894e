import { ConfigRejectedError } from '../errors.js';
import type { DesiredState } from '../state/desired-state.js';
import type { Change } from './reconciler.js';

interface Waiting {
  readonly change: Change;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
}

/** The applier's side of a precheck (apply/applier.ts). */
export interface Prechecker {
  /** False when this state goes out through the runtime API: nothing HAProxy could refuse. */
  needsCheck(state: DesiredState): boolean;
  /** `haproxy -c` on this state; ConfigRejectedError when HAProxy refuses it. */
  check(state: DesiredState): Promise<void>;
}

/**
 * Group commit for HAProxy's verdict on API changes. A reconfigure that needs a reload asks
 * `haproxy -c` before its spec is stored (see FlowProxy.reconfigure); a burst of them used to run
 * one check each, all at once: measured, 38 checks of 300-680 ms each for 100 concurrent
 * reconfigures on a 2-core machine. Here the changes that arrive while a check runs wait for it
 * and are then checked together, on the current state with all of them applied: one `haproxy -c`
 * per batch. A change that needs no check at all (it goes out through the runtime API) never
 * waits. If HAProxy refuses a batch, it is split in halves until the bad changes are found alone
 * (about 2·log2(n) checks for one bad change in n), so only they fail.
 *
 * A batch that passes may still contain a change that would fail alone against some other state;
 * the apply validates again before anything goes live, so the check only decides what gets stored.
 * A change the state itself refuses within a batch (an aclName another change of the batch took)
 * fails at once, even if that other change is refused later: it was in flight first.
 */
export class PrecheckBatch {
  private queue: Waiting[] = [];
  private running = false;
  /** Checks run, for tests and status. */
  checks = 0;

  constructor(
    private readonly snapshot: () => DesiredState,
    private readonly checker: Prechecker,
  ) {}

  run(change: Change): Promise<void> {
    try {
      if (!this.checker.needsCheck(change(this.snapshot()))) return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ change, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) await this.checkGroup(this.snapshot(), this.queue.splice(0));
    } finally {
      this.running = false;
    }
  }

  /** Checks `group` together on `base`; on a refusal, each half on its own. */
  private async checkGroup(base: DesiredState, group: readonly Waiting[]): Promise<void> {
    let state = base;
    const applied: Waiting[] = [];
    for (const w of group) {
      try {
        state = w.change(state);
        applied.push(w);
      } catch (err) {
        // Refused by the state itself (an aclName another change in the batch took): that one alone fails.
        w.reject(err);
      }
    }
    if (applied.length === 0) return;
    try {
      this.checks++;
      await this.checker.check(state);
      for (const w of applied) w.resolve();
    } catch (err) {
      if (!(err instanceof ConfigRejectedError) || applied.length === 1) {
        for (const w of applied) w.reject(err);
        return;
      }
      const half = Math.ceil(applied.length / 2);
      await this.checkGroup(base, applied.slice(0, half));
      await this.checkGroup(base, applied.slice(half));
    }
  }
}
