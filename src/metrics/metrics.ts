import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { Ring } from './ring.js';

/**
 * Where a change to the desired state came from, for the propagation histogram:
 * - `api`: a reconfigure or remove accepted by this replica's API;
 * - `consul-instances`: discovery saw instances change in Consul (the blocking query's answer);
 * - `kv`: another replica's change, seen in the shared specs in Consul KV;
 * - `restore`: the start-up restore (shared specs, the environment's services, the Swarm Listener's).
 */
export const CHANGE_SOURCES = ['api', 'consul-instances', 'kv', 'restore'] as const;
export type ChangeSource = (typeof CHANGE_SOURCES)[number];

export type ApplyKindLabel = 'runtime' | 'reload' | 'none';

/** One apply, as the recent-applies ring keeps it (a dashboard reads these). */
export interface RecentApply {
  readonly generation: number;
  readonly kind: ApplyKindLabel;
  readonly trigger: string;
  readonly durationMs: number;
  readonly at: string;
  /** Each change it made live that came from a known source: how long from seen to served. */
  readonly propagation: readonly { readonly source: ChangeSource; readonly ms: number }[];
}

/** What the gauges read at scrape time. */
export interface MetricsSources {
  generation(): number;
  ready(): boolean;
  services(): number;
  haproxyUp(): boolean;
  /** Blocking queries in flight, and open connections by budget. */
  consul(): { readonly openWatches: number; readonly connections: { readonly watch: number; readonly request: number } };
  /** Live replicas and whether all agree with this one; undefined while that cannot be known. */
  fleet(): Promise<{ readonly replicas: number; readonly inAgreement: boolean } | undefined>;
}

/** Endpoints of the API counted by name; anything else is `other`. */
const ENDPOINTS = new Set(['prometheus', 'reconfigure', 'remove', 'reload', 'config', 'cert', 'certs', 'ping', 'status', 'metrics', 'successfulinitreload', 'test', 'dashboard']);

/** From 1 ms (a runtime apply) to a minute (a reload at 10,000 services on a busy machine). */
const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** Process metrics (CPU, memory, event loop, GC) are the process's, not a proxy's: one registry for all. */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** How long a scrape waits for the replica list from Consul before it reports the fleet as unknown. */
const FLEET_READ_MS = 2000;

/**
 * The control plane's Prometheus metrics (prom-client, one registry per proxy so several proxies
 * in one process keep theirs apart) and the ring of recent applies. With METRICS=false every
 * method returns at once and the registry stays empty; the ring is kept either way (it is what
 * `status`-like views read, and costs a hundred small objects).
 */
export class Metrics {
  readonly registry = new Registry();
  readonly recent = new Ring<RecentApply>(100);
  private readonly m: ReturnType<typeof define> | undefined;
  private sources: MetricsSources | undefined;
  private fleetRead: { at: number; value: Promise<{ replicas: number; inAgreement: boolean } | undefined> } | undefined;

  constructor(readonly enabled: boolean) {
    this.m = enabled ? define(this.registry, this) : undefined;
    // From start-up on: GC and event-loop figures cover the whole life of the process.
    if (enabled) processMetrics();
  }

  /** Gauges read these at scrape time. */
  bind(sources: MetricsSources): void {
    this.sources = sources;
  }

  get boundSources(): MetricsSources | undefined {
    return this.sources;
  }

  /** One read of the replica list per second at most, however many gauges (and scrapes) ask. */
  fleetView(): Promise<{ replicas: number; inAgreement: boolean } | undefined> {
    const now = Date.now();
    if (!this.fleetRead || now - this.fleetRead.at > 1000) {
      const read = this.sources?.fleet() ?? Promise.resolve(undefined);
      const timeout = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), FLEET_READ_MS).unref());
      this.fleetRead = { at: now, value: Promise.race([read.catch(() => undefined), timeout]) };
    }
    return this.fleetRead.value;
  }

  apiRequest(endpoint: string, status: number, seconds: number): void {
    if (!this.m) return;
    const labels = { endpoint: ENDPOINTS.has(endpoint) ? endpoint : 'other', outcome: status < 400 ? 'ok' : status < 500 ? 'client_error' : 'server_error' };
    this.m.apiRequests.inc(labels);
    this.m.apiDuration.observe(labels, seconds);
  }

  /** An apply finished (any kind), with the propagation of each change it made live. */
  applied(record: Omit<RecentApply, 'propagation'>, propagation: RecentApply['propagation']): void {
    // The ring keeps what changed HAProxy or made a change live, not a watch's repeated answers.
    if (record.kind !== 'none' || propagation.length > 0) this.recent.push({ ...record, propagation });
    if (!this.m) return;
    this.m.applies.inc({ kind: record.kind });
    this.m.applyDuration.observe({ kind: record.kind }, record.durationMs / 1000);
    for (const p of propagation) this.m.propagation.observe({ trigger: p.source, kind: record.kind }, p.ms / 1000);
  }

  /** `check`: haproxy -c refused an apply's config; `reload`: HAProxy did not come up with it. */
  reloadFailed(stage: 'check' | 'reload'): void {
    this.m?.reloadFailures.inc({ stage });
  }

  runtimeFallback(): void {
    this.m?.runtimeFallbacks.inc();
  }

  haproxyRestarted(): void {
    this.m?.restarts.inc();
  }

  /** One attempt at one Consul address: `kind` blocking or ordinary, `outcome` 2xx…5xx, error (no answer) or aborted. */
  consulRequest(kind: 'blocking' | 'ordinary', outcome: string): void {
    this.m?.consulRequests.inc({ kind, class: outcome });
  }

  /** The text Prometheus scrapes: this proxy's metrics, then the process's. */
  async text(): Promise<string> {
    return `${await this.registry.metrics()}\n${await processMetrics().metrics()}`;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

function define(registry: Registry, metrics: Metrics) {
  const registers = [registry];
  const src = () => metrics.boundSources;
  const applies = new Counter({ name: 'dfp_applies_total', help: 'Applies of the desired state to HAProxy, by kind: runtime (runtime API commands), reload, none (nothing to change).', labelNames: ['kind'], registers });
  for (const kind of ['runtime', 'reload', 'none']) applies.inc({ kind }, 0);
  const reloadFailures = new Counter({ name: 'dfp_reload_failures_total', help: "Applies that needed a reload and failed: stage check (haproxy -c refused the config) or reload (HAProxy did not come up with it; the previous config keeps serving).", labelNames: ['stage'], registers });
  for (const stage of ['check', 'reload']) reloadFailures.inc({ stage }, 0);
  const consulRequests = new Counter({ name: 'dfp_consul_requests_total', help: 'Requests to Consul, each attempt at each address: kind blocking (watches) or ordinary; class 2xx, 3xx, 4xx, 5xx, error (no answer: refused, timed out) or aborted (the proxy stopped waiting).', labelNames: ['kind', 'class'], registers });
  const apiRequests = new Counter({ name: 'dfp_api_requests_total', help: 'API requests by endpoint and outcome (ok: 2xx/3xx, client_error: 4xx, server_error: 5xx).', labelNames: ['endpoint', 'outcome'], registers });
  return {
    applies,
    reloadFailures,
    consulRequests,
    apiRequests,
    apiDuration: new Histogram({ name: 'dfp_api_request_duration_seconds', help: 'API request latency, from the request to the answer (for reconfigure and remove: until the change is live here).', labelNames: ['endpoint', 'outcome'], buckets: SECONDS_BUCKETS, registers }),
    applyDuration: new Histogram({ name: 'dfp_apply_duration_seconds', help: 'How long an apply took, from its start until HAProxy serves it (runtime commands done, or the new worker up).', labelNames: ['kind'], buckets: SECONDS_BUCKETS, registers }),
    propagation: new Histogram({
      name: 'dfp_propagation_seconds',
      help: 'From the moment a change is seen (the Consul answer arrives, or the API accepts it) until HAProxy serves it (the apply that includes it is done), by trigger and by the kind of that apply.',
      labelNames: ['trigger', 'kind'],
      buckets: SECONDS_BUCKETS,
      registers,
    }),
    runtimeFallbacks: new Counter({ name: 'dfp_runtime_fallbacks_total', help: 'Runtime API applies that failed half-way and went out as a reload instead.', registers }),
    restarts: new Counter({ name: 'dfp_haproxy_restarts_total', help: 'Times the supervisor started HAProxy again after it died.', registers }),
    generation: new Gauge({
      name: 'dfp_generation',
      help: 'Generation of the config HAProxy serves (counts applies that changed something since start).',
      registers,
      collect() {
        this.set(src()?.generation() ?? 0);
      },
    }),
    ready: new Gauge({
      name: 'dfp_ready',
      help: '1 once the start-up restore is live (successfulinitreload answers 200), else 0.',
      registers,
      collect() {
        this.set(src()?.ready() ? 1 : 0);
      },
    }),
    services: new Gauge({
      name: 'dfp_services',
      help: 'Services configured (from the API, Consul KV and the environment).',
      registers,
      collect() {
        this.set(src()?.services() ?? 0);
      },
    }),
    haproxyUp: new Gauge({
      name: 'dfp_haproxy_up',
      help: '1 while the supervised HAProxy master serves, 0 while it is down or restarting.',
      registers,
      collect() {
        this.set(src()?.haproxyUp() ? 1 : 0);
      },
    }),
    openWatches: new Gauge({
      name: 'dfp_consul_open_watches',
      help: 'Blocking queries to Consul in flight (held, or waiting for a watch connection).',
      registers,
      collect() {
        this.set(src()?.consul().openWatches ?? 0);
      },
    }),
    connections: new Gauge({
      name: 'dfp_consul_connections',
      help: 'Open connections to Consul, by budget: blocking (CONSUL_WATCH_CONNECTIONS) or ordinary (CONSUL_REQUEST_CONNECTIONS).',
      labelNames: ['kind'],
      registers,
      collect() {
        const c = src()?.consul().connections;
        this.set({ kind: 'blocking' }, c?.watch ?? 0);
        this.set({ kind: 'ordinary' }, c?.request ?? 0);
      },
    }),
    fleetKnown: new Gauge({
      name: 'dfp_fleet_known',
      help: '1 when the replica list could be read from Consul at this scrape, else 0 (then the two gauges below are 0 too).',
      registers,
      async collect() {
        this.set((await metrics.fleetView()) === undefined ? 0 : 1);
      },
    }),
    replicas: new Gauge({
      name: 'dfp_fleet_replicas',
      help: 'Live replicas of this PROXY_INSTANCE_NAME (their reports in Consul KV), this one included.',
      registers,
      async collect() {
        this.set((await metrics.fleetView())?.replicas ?? 0);
      },
    }),
    inAgreement: new Gauge({
      name: 'dfp_fleet_in_agreement',
      help: '1 when every live replica has applied the same shared specs as this one, 0 when one differs or the list is unknown (dfp_fleet_known 0).',
      registers,
      async collect() {
        this.set((await metrics.fleetView())?.inAgreement ? 1 : 0);
      },
    }),
  };
}

/** For objects that have no metrics of their own to report to (unit tests, parts built alone). */
export const NO_METRICS = new Metrics(false);
