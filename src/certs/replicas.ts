import { setTimeout as sleep } from 'node:timers/promises';
import { noReportsReason, type ReplicaReport } from '../consul/replicas.js';
import { ReplicasLaggingError, ReplicasUnknownError } from '../errors.js';

/**
 * One replica's answer to `cert?...&distribute=true` (or `wait=all`): `Live` after a PUT, `Removed`
 * after a DELETE; `Reason` says why not when it is false.
 */
export interface CertReplicaResult {
  readonly ReplicaId: string;
  readonly Api: string;
  readonly Live?: boolean;
  readonly Removed?: boolean;
  readonly Reason?: string;
}

export interface CertWait {
  readonly name: string;
  /** The KV index the PUT or DELETE landed at. */
  readonly index: number;
  readonly action: 'put' | 'delete';
  readonly timeoutMs: number;
}

type Verdict = { state: 'done' } | { state: 'pending' | 'failed'; reason: string };

/**
 * Each replica reports the KV index up to which the shared certificates are live there
 * (`certsIndex`) and the stored certificates its HAProxy refused (`certsRefused`). A replica has
 * applied a change once its index reaches the change's; a PUT is live there unless it refused that
 * certificate. Like `wait=all` on reconfigure: every live replica within REPLICA_WAIT_TIMEOUT, else
 * 504 DFP_ERR_REPLICAS_LAGGING naming the others (a replica that refused it counts as not applied,
 * and is known at once); a replica list Consul refuses, or none at all, is 502 DFP_ERR_REPLICAS_UNKNOWN.
 */
export async function waitForCertOnReplicas(list: () => Promise<ReplicaReport[]>, prefix: string, w: CertWait): Promise<CertReplicaResult[]> {
  const deadline = Date.now() + w.timeoutMs;
  const unknown = `${w.action === 'put' ? 'stored and live' : 'deleted'} here, but whether every live replica followed is unknown: the replica list cannot be read`;
  const verdict = (r: ReplicaReport): Verdict => {
    if (typeof r.certsIndex !== 'number') return { state: 'pending', reason: 'this replica does not report its certificates (an older version?)' };
    if (r.certsIndex < w.index) return { state: 'pending', reason: `not confirmed within ${w.timeoutMs} ms: its certificates are live up to KV index ${r.certsIndex}, the change is at ${w.index}` };
    if (w.action === 'put' && (r.certsRefused ?? []).includes(w.name)) return { state: 'failed', reason: 'HAProxy on this replica refused the certificate (its log says why)' };
    return { state: 'done' };
  };
  const result = (r: ReplicaReport, v: Verdict): CertReplicaResult => ({
    ReplicaId: r.id,
    Api: r.api,
    ...(w.action === 'put' ? { Live: v.state === 'done' } : { Removed: v.state === 'done' }),
    ...(v.state === 'done' ? {} : { Reason: v.reason }),
  });
  for (;;) {
    const replicas = await list().catch((err: unknown) => {
      throw err instanceof ReplicasUnknownError ? new ReplicasUnknownError(err.reason, unknown) : err;
    });
    const verdicts = replicas.map((r) => [r, verdict(r)] as const);
    const results = verdicts.map(([r, v]) => result(r, v));
    const notDone = verdicts.filter(([, v]) => v.state !== 'done').map(([r]) => r.id);
    if (replicas.length > 0 && notDone.length === 0) return results;
    const settled = replicas.length > 0 && verdicts.every(([, v]) => v.state !== 'pending');
    if (settled || Date.now() > deadline) {
      if (replicas.length === 0) throw new ReplicasUnknownError(noReportsReason(prefix), unknown);
      throw new ReplicasLaggingError(notDone, w.timeoutMs, results);
    }
    await sleep(25);
  }
}
