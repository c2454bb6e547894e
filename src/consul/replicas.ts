import { setTimeout as sleep } from 'node:timers/promises';
import { ReplicasUnknownError } from '../errors.js';
import type { Logger } from '../util/log.js';
import { type ConsulClient, consulAnswer } from './client.js';

/** What each replica says about itself, under `<instance>/_dfp/replicas/<id>`. */
export interface ReplicaReport {
  readonly id: string;
  /** Where its API answers (for operators; not used for fan-out). */
  readonly api: string;
  readonly generation: number;
  /** Hash of the live haproxy.cfg and maps (differs between hosts with different ports or paths). */
  readonly configHash: string;
  /** Hash of the service specs it has applied: equal on every replica that agrees. */
  readonly specsHash: string;
  /** The KV index of the shared specs it has applied: `wait=all` waits for every replica to reach a write's index. */
  readonly kvIndex: number;
  /** The KV index up to which the shared certificates are live here (`cert` with `distribute` waits on it). */
  readonly certsIndex?: number;
  /** Stored certificates this replica's HAProxy refused. */
  readonly certsRefused?: readonly string[];
  readonly ready: boolean;
  readonly at: string;
}

interface KvEntry {
  Key: string;
  Value: string | null;
}

const SESSION_TTL_S = 10;

/**
 * Publishes this replica's report, tied to a Consul session with `Behavior: delete`: if the replica
 * dies, the session expires (TTL 10 s; Consul may take up to twice that) and the report disappears,
 * so the replica list only shows live proxies. A session lost while Consul was away is re-created.
 */
export class ReplicaPublisher {
  private session: string | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private dirty = true;
  /** The last failure logged, so a lasting one is logged once. */
  private lastFailure: string | undefined;
  private wake: (() => void) | undefined;
  /** Aborts a request in flight when stopping: the session's destroy must not wait in line behind it. */
  private readonly ctrl = new AbortController();

  constructor(
    private readonly consul: ConsulClient,
    private readonly prefix: string,
    private readonly id: string,
    private readonly report: () => ReplicaReport,
    private readonly log: Logger,
  ) {}

  get key(): string {
    return `${this.prefix}${encodeURIComponent(this.id)}`;
  }

  start(): void {
    this.loop = this.run();
  }

  /** Publish now (after an apply). */
  publish(): void {
    this.dirty = true;
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    this.ctrl.abort();
    await this.loop;
    if (this.session) {
      // Destroying the session deletes the report at once (Behavior: delete).
      await this.consul.request(`/v1/session/destroy/${this.session}`, { method: 'PUT', timeoutMs: 2000, signal: AbortSignal.timeout(3000) }).catch(() => undefined);
    }
  }

  private async run(): Promise<void> {
    let lastRenew = 0;
    while (!this.stopped) {
      try {
        if (this.session === undefined) {
          const res = await this.consul.request('/v1/session/create', {
            method: 'PUT',
            signal: this.ctrl.signal,
            body: JSON.stringify({ Name: `dfp-replica-${this.id}`, TTL: `${SESSION_TTL_S}s`, Behavior: 'delete', LockDelay: '0s' }),
          });
          if (res.status !== 200) throw new Error(`Consul answered ${consulAnswer(res.status, res.body)} creating a session`);
          this.session = (JSON.parse(res.body) as { ID: string }).ID;
          this.dirty = true;
          lastRenew = Date.now();
        }
        if (Date.now() - lastRenew > (SESSION_TTL_S * 1000) / 3) {
          const res = await this.consul.request(`/v1/session/renew/${this.session}`, { method: 'PUT', signal: this.ctrl.signal });
          if (res.status === 404) {
            this.session = undefined; // expired while we could not reach Consul
            continue;
          }
          if (res.status !== 200) throw new Error(`Consul answered ${consulAnswer(res.status, res.body)} renewing the session`);
          lastRenew = Date.now();
        }
        if (this.dirty) {
          this.dirty = false;
          const res = await this.consul.request(`/v1/kv/${this.key}?acquire=${this.session}`, { method: 'PUT', body: JSON.stringify(this.report()), signal: this.ctrl.signal });
          // A refusal (an ACL's 403) is an error, retried after a pause; only `false` means the session is gone.
          if (res.status !== 200) throw new Error(`Consul answered ${consulAnswer(res.status, res.body)} writing ${this.key}`);
          if (res.body.trim() !== 'true') {
            this.session = undefined;
            continue;
          }
        }
      } catch (err) {
        if (this.stopped) break;
        this.dirty = true;
        // Once per distinct failure: a refusal that lasts (an ACL) would otherwise log every second.
        const message = (err as Error).message;
        if (message !== this.lastFailure) this.log.warn(`publishing replica state: ${message}; retrying every second (logged again if the reason changes)`);
        this.lastFailure = message;
        await sleep(1000);
        continue;
      }
      if (this.lastFailure !== undefined) this.log.info('publishing replica state: works again');
      this.lastFailure = undefined;
      if (this.dirty || this.stopped) continue; // published again while the last write was in flight
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 1000).unref();
      });
      this.wake = undefined;
    }
  }
}

/**
 * The live replicas' reports. Only a 404 means "none" (nothing under the prefix); any other answer
 * (a 403 from an ACL, say) leaves them unknown, and saying "none" would make `status` claim
 * agreement and `wait=all` wait for nobody.
 */
export async function listReplicas(consul: ConsulClient, prefix: string): Promise<ReplicaReport[]> {
  const res = await consul.request(`/v1/kv/${prefix}?recurse`);
  if (res.status === 404) return [];
  if (res.status !== 200) throw new ReplicasUnknownError(`Consul answered ${res.status} reading ${prefix} (${res.body.trim().slice(0, 200) || 'no reason given'})`);
  const out: ReplicaReport[] = [];
  for (const e of JSON.parse(res.body) as KvEntry[]) {
    try {
      out.push(JSON.parse(Buffer.from(e.Value ?? '', 'base64').toString('utf8')) as ReplicaReport);
    } catch {
      // a foreign key under our prefix
    }
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : 1));
}

/**
 * Why an empty list proves nothing: every replica publishes its own report, so none at all means
 * the reports are hidden (without `enable_key_list_policy`, Consul leaves out the entries a token
 * cannot read and answers as if there were none) or not published yet.
 */
export function noReportsReason(prefix: string): string {
  return `Consul lists no replica report under ${prefix}, not even this replica's: the proxy's token may lack read on that prefix (Consul then hides the reports), or none is published yet`;
}

/** The replicas, and why they are unknown if they are (for `status`, which reports rather than fails). */
export async function readReplicas(consul: ConsulClient, prefix: string): Promise<{ replicas: ReplicaReport[] | null; unknown: string | null }> {
  try {
    const replicas = await listReplicas(consul, prefix);
    return { replicas, unknown: replicas.length === 0 ? noReportsReason(prefix) : null };
  } catch (err) {
    return { replicas: null, unknown: err instanceof ReplicasUnknownError ? err.reason : (err as Error).message };
  }
}
