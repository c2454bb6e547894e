import type { Instance } from '../discovery/types.js';
import type { StatRow } from '../haproxy/stats.js';
import type { RecentApply } from '../metrics/metrics.js';
import type { SlotTable } from '../render/slots.js';
import { slotName } from '../render/slots.js';
import { type Destination, dnsTarget, type ServiceSpec } from '../spec/types.js';
import type { DashboardBackend, DashboardData, DashboardInstance, DashboardProxy, DashboardReplica, DashboardService } from './model.js';

/** One HAProxy backend of a service as HAProxy serves it now: its name and slot holders. */
export interface ServedBackend {
  readonly name: string;
  readonly dest: Destination;
  /** Instance ID per slot; undefined before the first apply gave the backend a table. */
  readonly slots: SlotTable | undefined;
}

/** A replica's report, the fields the dashboard shows. */
export interface ReplicaView {
  readonly id: string;
  readonly generation: number;
  readonly ready: boolean;
  readonly specsHash: string;
  readonly kvIndex: number;
  readonly at: string;
}

export interface DashboardInput {
  readonly at: Date;
  readonly proxy: DashboardProxy;
  readonly services: readonly {
    readonly spec: ServiceSpec;
    readonly consulService: string;
    readonly source: 'api' | 'env';
    readonly instances: readonly Instance[];
    readonly backends: readonly ServedBackend[];
  }[];
  /** HAProxy's `show stat`, or why it could not be read. */
  readonly stats: readonly StatRow[] | { readonly error: string };
  /** The fleet's reports, or why they are unknown; `mine` is this replica's specs hash. */
  readonly replicas: { readonly list: readonly ReplicaView[] | null; readonly unknown: string | null; readonly mine: string; readonly self: string };
  readonly recent: readonly RecentApply[];
}

/** The document `/ui/data` answers, from the proxy's parts (pure: every input is a value). */
export function buildDashboard(input: DashboardInput): DashboardData {
  const rows = Array.isArray(input.stats) ? (input.stats as readonly StatRow[]) : undefined;
  const statsError = Array.isArray(input.stats) ? null : (input.stats as { error: string }).error;
  const byProxy = new Map<string, Map<string, StatRow>>();
  for (const row of rows ?? []) {
    const rowsOf = byProxy.get(row.pxname) ?? new Map<string, StatRow>();
    byProxy.set(row.pxname, rowsOf);
    rowsOf.set(row.svname, row);
  }
  let requests = 0;
  let errors = 0;
  const services: DashboardService[] = input.services.map((s) => {
    const backends = s.backends.map((b): DashboardBackend => {
      const row = byProxy.get(b.name)?.get('BACKEND');
      // HTTP backends count requests; tcp ones count connections only (req_tot stays empty).
      const served = row === undefined ? 0 : b.dest.reqMode === 'http' ? row.count('req_tot') : row.count('stot');
      const e5 = row?.count('hrsp_5xx') ?? 0;
      const conn = (row?.count('econ') ?? 0) + (row?.count('eresp') ?? 0);
      requests += served;
      errors += e5 + conn;
      return { name: b.name, status: row?.field('status') || 'unknown', requests: served, errors5xx: e5, connectionErrors: conn, current: row?.count('scur') ?? 0 };
    });
    // Every backend of a service holds the same instances; the first one's slot and health are shown.
    const first = s.backends[0];
    const instances = s.instances.map((i): DashboardInstance => {
      const index = first?.slots?.indexOf(i.id) ?? -1;
      const slot = first !== undefined && index >= 0 ? slotName(index) : null;
      const row = slot === null || first === undefined ? undefined : byProxy.get(first.name)?.get(slot);
      return {
        id: i.id,
        address: i.address,
        port: i.port,
        backend: slot === null ? null : (first?.name ?? null),
        slot,
        health: row?.field('status') || 'unknown',
        check: row?.field('check_status') ?? '',
      };
    });
    return {
      name: s.spec.serviceName,
      consulService: s.consulService,
      source: s.source,
      routes: s.backends.map((b) => ({
        backend: b.name,
        reqMode: b.dest.reqMode,
        paths: [...(b.dest.servicePath ?? [])],
        domains: [...(b.dest.serviceDomain ?? [])],
        srcPort: b.dest.srcPort ?? null,
        port: b.dest.port ?? null,
        dns: dnsTarget(s.spec, b.dest) ?? null,
      })),
      instances,
      backends,
    };
  });
  const { list, unknown, mine, self } = input.replicas;
  const replicas: DashboardReplica[] = (list ?? []).map((r) => ({ id: r.id, generation: r.generation, ready: r.ready, agrees: r.specsHash === mine, self: r.id === self, kvIndex: r.kvIndex, at: r.at }));
  return {
    at: input.at.toISOString(),
    proxy: input.proxy,
    services: [...services].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    replicas: {
      unknown: list === null ? (unknown ?? 'unknown') : unknown,
      inAgreement: list === null || unknown !== null ? null : replicas.every((r) => r.agrees),
      list: replicas,
    },
    applies: input.recent.map((r) => ({ generation: r.generation, kind: r.kind, trigger: r.trigger, durationMs: r.durationMs, at: r.at, propagation: r.propagation.map((p) => ({ source: p.source, ms: p.ms })) })),
    traffic: { requests, errors, statsError },
  };
}
