import { isIP } from 'node:net';
import type { Instance, InstanceSource } from '../discovery/types.js';
import { ConsulUnavailableError } from '../errors.js';
import type { Logger } from '../util/log.js';
import { type ConsulClient, type ConsulResponse, consulAnswer, retryTransient } from './client.js';

/** One entry of `/v1/health/service/<name>`, as far as routing needs it (catalog.ts builds the same). */
export interface HealthEntry {
  Node?: { Node?: string; Address?: string };
  Service?: { ID?: string; Service?: string; Address?: string; Port?: number };
}

const SAFE_ID = /^[\x21-\x7e]{1,256}$/;

/**
 * Healthy instances from `/v1/health/service/<name>?passing`. A service registered without
 * checks counts as healthy (only serfHealth applies). Entries that cannot be routed safely (no
 * IP literal, bad port, odd ID) are skipped with a warning instead of reaching haproxy.cfg.
 */
export class ConsulInstanceSource implements InstanceSource {
  constructor(
    private readonly consul: ConsulClient,
    private readonly log: Logger,
    /** false: every registered instance, whatever its health (the original's behaviour). */
    readonly passingOnly = true,
  ) {}

  /** The health endpoint for a service, with extra query parameters (blocking queries). */
  path(service: string, query: Record<string, string> = {}, stale = false): string {
    const params = new URLSearchParams(query);
    if (this.passingOnly) params.set('passing', '');
    // stale: any server may answer, so instance lists stay readable during a leader election; but a
    // follower can lag, so it is only the fallback (watches simply keep the last known list).
    if (stale) params.set('stale', '');
    const qs = params.toString().replace(/(^|&)(passing|stale)=(?=&|$)/g, '$1$2');
    return `/v1/health/service/${encodeURIComponent(service)}${qs ? `?${qs}` : ''}`;
  }

  /**
   * A consistent read (what a reconfigure right after a registration must see); while the cluster
   * has no leader it falls back to a stale read from any server rather than failing.
   */
  async instances(service: string): Promise<Instance[]> {
    let res: ConsulResponse;
    try {
      res = await this.consul.request(this.path(service));
    } catch (err) {
      if (!(err instanceof ConsulUnavailableError) || !err.transient) throw err;
      res = await retryTransient(() => this.consul.request(this.path(service, {}, true)));
    }
    return this.parse(service, res.status, res.body);
  }

  parse(service: string, status: number, body: string): Instance[] {
    if (status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(status, body)} reading the instances of ${service}`);
    let entries: HealthEntry[];
    try {
      entries = JSON.parse(body) as HealthEntry[];
      if (!Array.isArray(entries)) throw new Error('not an array');
    } catch (err) {
      throw new ConsulUnavailableError(`Consul sent an unreadable answer for service ${service}: ${(err as Error).message}`);
    }
    return toInstances(service, entries, this.log);
  }
}

/**
 * The routable instances among health entries (in their order): the rules every discovery path
 * shares. Entries that cannot be routed safely (no IP literal, bad port, odd ID) are skipped with a
 * warning instead of reaching haproxy.cfg; a service ID registered on two nodes gets `@<node>`.
 */
export function toInstances(service: string, entries: readonly HealthEntry[], log: Logger): Instance[] {
  const out: Instance[] = [];
  const seen = new Set<string>();
  const count = new Map<string, number>();
  for (const e of entries) count.set(e.Service?.ID ?? '', (count.get(e.Service?.ID ?? '') ?? 0) + 1);
  for (const e of entries) {
    // Service IDs are unique per agent only: the same ID on two nodes gets the node appended.
    const rawId = e.Service?.ID ?? '';
    const id = (count.get(rawId) ?? 0) > 1 ? `${rawId}@${e.Node?.Node ?? ''}` : rawId;
    const address = e.Service?.Address || e.Node?.Address || '';
    const port = e.Service?.Port ?? 0;
    if (!SAFE_ID.test(id) || isIP(address) === 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
      log.warn(`skipping instance ${JSON.stringify(id)} of ${service}: needs an IP address and a port 1-65535 (got ${JSON.stringify(address)}:${port})`);
      continue;
    }
    if (seen.has(id)) continue;
    seen.add(id);
    out.push({ id, address, port });
  }
  return out;
}

/**
 * Whether Consul has any registration of a service, healthy or not (`/v1/catalog/service/<name>`):
 * what `DISCOVERY=dns` asks before routing a service to its DNS name instead.
 */
export async function knownToConsul(consul: ConsulClient, service: string): Promise<boolean> {
  const path = `/v1/catalog/service/${encodeURIComponent(service)}`;
  const res = await consul.request(path).catch((err: unknown) => {
    if (!(err instanceof ConsulUnavailableError) || !err.transient) throw err;
    return retryTransient(() => consul.request(`${path}?stale`));
  });
  if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${res.status} for the catalog of ${service}: ${res.body.slice(0, 200)}`);
  const entries: unknown = JSON.parse(res.body);
  return Array.isArray(entries) && entries.length > 0;
}
