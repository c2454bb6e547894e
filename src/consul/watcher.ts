import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Instance } from '../discovery/types.js';
import type { Logger } from '../util/log.js';
import type { ConsulClient, ConsulResponse } from './client.js';
import { repeatWithBackoff } from './kv.js';
import type { ConsulInstanceSource } from './instances.js';

export interface WatcherOptions {
  /** Blocking query wait, seconds (Consul caps it at 600; keep it <= 300). */
  readonly waitSeconds: number;
  /**
   * Services followed with a blocking query each. Every pending query holds a connection, and
   * Consul agents allow 200 per client address by default; past this number the rest are re-read
   * when a cluster-wide change detector fires.
   */
  readonly maxWatches: number;
}

type OnChange = (service: string, instances: Instance[]) => void;

interface Watch {
  readonly ctrl: AbortController;
  lastHash: string | undefined;
  /** Report the next read even if it equals the last one (after a reconfigure overwrote state). */
  force: boolean;
  /** X-Consul-Index of the last answer reported: an older answer that arrives later is not. */
  reportedIndex: number;
}

/**
 * Follows the healthy instances of every configured Consul service and reports changes, so
 * scaling, crashes and failing checks reach HAProxy without an API call (the original needed one,
 * vfarcic#23). Rules from consul.md: compare bodies, not just indexes (spurious wake-ups); reset the
 * index when it goes backwards or after any error (agent restarts); back off with jitter; never
 * report a failed read as "no instances".
 */
export class ConsulWatcher {
  private readonly watches = new Map<string, Watch>();
  private readonly overflow = new Map<string, string | undefined>();
  private detector: AbortController | undefined;
  private stopped = false;
  /** A full overflow re-read in flight, and whether another one was asked for meanwhile. */
  private resyncing: Promise<void> | undefined;
  private resyncAgain = false;

  constructor(
    private readonly consul: ConsulClient,
    private readonly source: ConsulInstanceSource,
    private readonly onChange: OnChange,
    private readonly options: WatcherOptions,
    private readonly log: Logger,
  ) {}

  /** Follows exactly these services from now on. */
  sync(services: Iterable<string>): void {
    if (this.stopped) return;
    const wanted = new Set(services);
    for (const [name, w] of this.watches) {
      if (!wanted.has(name)) {
        w.ctrl.abort();
        this.watches.delete(name);
      }
    }
    for (const name of this.overflow.keys()) if (!wanted.has(name)) this.overflow.delete(name);
    for (const name of wanted) {
      if (this.watches.has(name) || this.overflow.has(name)) continue;
      if (this.watches.size < this.options.maxWatches) this.startWatch(name);
      else this.overflow.set(name, undefined);
    }
    if (this.overflow.size > 0 && this.detector === undefined) this.startDetector();
    if (this.overflow.size === 0 && this.detector !== undefined) {
      this.detector.abort();
      this.detector = undefined;
    }
  }

  /**
   * Re-reads a service now and reports it even if unchanged. A read of its own beside the blocking
   * query, not an abort of it: Consul 1.8 notices a client that left a blocking query only when the
   * query answers, so every aborted query would hold one of the client's connection slots (200 by
   * default) for up to the wait time.
   */
  kick(service: string): void {
    const w = this.watches.get(service);
    if (w) {
      void this.readOnce(service, w);
    } else if (this.overflow.has(service)) {
      this.overflow.set(service, undefined);
      void this.resyncOverflow([service]);
    }
  }

  stats(): { blocking: number; detected: number } {
    return { blocking: this.watches.size, detected: this.overflow.size };
  }

  stop(): void {
    this.stopped = true;
    for (const w of this.watches.values()) w.ctrl.abort();
    this.watches.clear();
    this.detector?.abort();
  }

  private async readOnce(name: string, w: Watch): Promise<void> {
    try {
      const res = await this.consul.request(this.source.path(name), { signal: w.ctrl.signal });
      if (res.status !== 200) throw new Error(`Consul answered ${res.status}: ${res.body.slice(0, 200)}`);
      w.force = true;
      this.report(name, w, res);
    } catch (err) {
      if (!w.ctrl.signal.aborted) this.log.warn(`re-reading ${name}: ${(err as Error).message}; the watch will report its next change`);
    }
  }

  private startWatch(name: string): void {
    const w: Watch = { ctrl: new AbortController(), lastHash: undefined, force: false, reportedIndex: 0 };
    this.watches.set(name, w);
    void this.follow(name, w);
  }

  private async follow(name: string, w: Watch): Promise<void> {
    let index = 0;
    let address = '';
    let backoff = 100;
    const wait = this.options.waitSeconds;
    while (!w.ctrl.signal.aborted) {
      const signal = w.ctrl.signal;
      let res: ConsulResponse;
      try {
        const query: Record<string, string> = index > 0 ? { index: String(index), wait: `${wait}s` } : {};
        res = await this.consul.request(this.source.path(name, query), { signal, timeoutMs: wait * 1000 * 1.0625 + 5000 });
        // 403 (ACL), 429 (per-client connection limit): no index, so no blocking; back off instead.
        if (res.status !== 200) throw new Error(`Consul answered ${res.status}: ${res.body.slice(0, 200)}`);
      } catch (err) {
        if (w.ctrl.signal.aborted) return;
        index = 0;
        this.log.warn(`watch ${name}: ${(err as Error).message}; retrying in about ${backoff} ms`);
        await sleep(backoff * (0.5 + Math.random()));
        backoff = Math.min(backoff * 2, 5000);
        continue;
      }
      backoff = 100;
      const next = res.index ?? 0;
      if (res.address !== address) {
        // Failover to another agent: the answer is current, its index space is the new one.
        address = res.address;
        index = next;
        w.reportedIndex = 0;
      } else {
        // Backwards means the agent lost its state (restart): start over with a full read.
        if (next < index) w.reportedIndex = 0;
        index = next < index ? 0 : next;
      }
      this.report(name, w, res);
    }
  }

  private report(name: string, w: { lastHash: string | undefined; force?: boolean; reportedIndex?: number }, res: ConsulResponse): void {
    // A blocking answer computed before a kick's read but delivered after it is older: skip it.
    if (w.reportedIndex !== undefined && res.index !== undefined) {
      if (res.index < w.reportedIndex) return;
      w.reportedIndex = res.index;
    }
    const hash = createHash('sha256').update(res.body).digest('hex');
    if (hash === w.lastHash && !w.force) return;
    let instances: Instance[];
    try {
      instances = this.source.parse(name, res.status, res.body);
    } catch (err) {
      this.log.warn(`watch ${name}: ${(err as Error).message}`);
      return;
    }
    w.lastHash = hash;
    w.force = false;
    this.onChange(name, instances);
  }

  /**
   * For services past maxWatches: two blocking queries for the whole catalog (registrations and
   * check states); when either moves, the overflow services are re-read with bounded concurrency
   * and only real changes are reported.
   */
  private startDetector(): void {
    const ctrl = new AbortController();
    this.detector = ctrl;
    for (const endpoint of ['/v1/catalog/services', '/v1/health/state/any']) void this.detect(endpoint, ctrl.signal);
  }

  private async detect(endpoint: string, signal: AbortSignal): Promise<void> {
    let index = 0;
    const wait = this.options.waitSeconds;
    await repeatWithBackoff(
      signal,
      async () => {
        const res = await this.consul.request(`${endpoint}${index > 0 ? `?index=${index}&wait=${wait}s` : ''}`, {
          signal,
          timeoutMs: wait * 1000 * 1.0625 + 5000,
        });
        if (res.status !== 200) throw new Error(`Consul answered ${res.status}`);
        const next = res.index ?? 0;
        const moved = next !== index;
        index = next < index ? 0 : next;
        if (moved) this.resyncAllOverflow();
      },
      (err) => {
        index = 0;
        this.log.debug(`change detector ${endpoint}: ${err.message}`);
      },
    );
  }

  /** Coalesced: a burst of catalog changes costs one re-read in flight plus at most one more. */
  private resyncAllOverflow(): void {
    if (this.resyncing) {
      this.resyncAgain = true;
      return;
    }
    this.resyncing = (async () => {
      do {
        this.resyncAgain = false;
        await this.resyncOverflow([...this.overflow.keys()]);
      } while (this.resyncAgain && !this.stopped);
      this.resyncing = undefined;
    })();
  }

  private async resyncOverflow(names: string[]): Promise<void> {
    const queue = [...names];
    const worker = async () => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        if (!this.overflow.has(name)) continue;
        try {
          const res = await this.consul.request(this.source.path(name));
          const entry = { lastHash: this.overflow.get(name) };
          this.report(name, entry, res);
          if (this.overflow.has(name)) this.overflow.set(name, entry.lastHash);
        } catch (err) {
          this.log.warn(`re-reading ${name}: ${(err as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
  }
}
