/**
 * What `GET /ui/data` answers: the dashboard's one JSON document. Types only, shared by the server
 * (src/dashboard/data.ts builds it) and the page's script (ui/dashboard.ts reads it), so both are
 * compiled against the same shape. No import: the browser build includes this file as it is.
 */

export interface DashboardData {
  /** The server's clock when the document was made (ISO 8601); request rates are per second of it. */
  readonly at: string;
  readonly proxy: DashboardProxy;
  readonly services: readonly DashboardService[];
  readonly replicas: DashboardReplicas;
  /** The ring of recent applies (oldest first): the ones that changed HAProxy or made a change live. */
  readonly applies: readonly DashboardApply[];
  /** HAProxy's counters summed over every backend of a service, for the request-rate chart. */
  readonly traffic: DashboardTraffic;
}

export interface DashboardProxy {
  readonly instanceName: string;
  readonly replicaId: string;
  readonly ready: boolean;
  readonly generation: number;
  /** Hash of the live files; '' for a moment after a scale event, until they are written. */
  readonly configHash: string;
  readonly haproxyUp: boolean;
  readonly haproxyRestarts: number;
  /** Applies since start, by kind. */
  readonly applyCounts: Readonly<Record<'runtime' | 'reload' | 'none', number>>;
  readonly metrics: boolean;
}

export interface DashboardService {
  readonly name: string;
  /** The Consul service its instances come from (`serviceName`, or `serviceName-serviceColor`). */
  readonly consulService: string;
  /** `api` (an API call, shared through Consul KV) or `env` (DFP_SERVICE_* of this replica). */
  readonly source: 'api' | 'env';
  readonly routes: readonly DashboardRoute[];
  /** What Consul reports (healthy ones only, with CONSUL_PASSING_ONLY), with HAProxy's view of each. */
  readonly instances: readonly DashboardInstance[];
  readonly backends: readonly DashboardBackend[];
}

export interface DashboardRoute {
  readonly backend: string;
  readonly reqMode: 'http' | 'tcp' | 'sni';
  readonly paths: readonly string[];
  readonly domains: readonly string[];
  readonly srcPort: number | null;
  readonly port: number | null;
  /** A DNS name HAProxy resolves (outboundHostname, discoveryType=dns), else null: Consul's instances. */
  readonly dns: string | null;
}

export interface DashboardInstance {
  /** The registry's ID (Registrator: `host:container:port`): text from Consul, never markup. */
  readonly id: string;
  readonly address: string;
  readonly port: number;
  /** The HAProxy backend and slot (`s1`…) that serve it; null until an apply has given it one. */
  readonly backend: string | null;
  readonly slot: string | null;
  /**
   * HAProxy's status of that slot: `UP`, `DOWN`, `MAINT`, `no check`, `UP 1/3` (going down), …;
   * `unknown` when HAProxy's stats could not be read or name no such server.
   */
  readonly health: string;
  /** The last health check's result (`L4OK`, `L7STS`, `L4CON`, …), '' without checks. */
  readonly check: string;
}

export interface DashboardBackend {
  readonly name: string;
  /** HAProxy's status of the backend: `UP`, `DOWN` (no server up), or `unknown`. */
  readonly status: string;
  /** HTTP requests (http backends) or connections (tcp) since the worker started. */
  readonly requests: number;
  /** Responses with a 5xx status, HAProxy's own (503 without a server) included. */
  readonly errors5xx: number;
  /** Failed connections to a server and failed or aborted server responses (`econ` + `eresp`). */
  readonly connectionErrors: number;
  /** Connections open now (`scur`). */
  readonly current: number;
}

export interface DashboardReplicas {
  /** Why the list is unknown (Consul refused or could not be read), else null. */
  readonly unknown: string | null;
  /** Whether every live replica applied the same shared specs as this one; null when unknown. */
  readonly inAgreement: boolean | null;
  readonly list: readonly DashboardReplica[];
}

export interface DashboardReplica {
  readonly id: string;
  readonly generation: number;
  readonly ready: boolean;
  readonly agrees: boolean;
  readonly self: boolean;
  readonly kvIndex: number;
  /** When it last published its report (ISO 8601). */
  readonly at: string;
}

export interface DashboardApply {
  readonly generation: number;
  readonly kind: 'runtime' | 'reload' | 'none';
  readonly trigger: string;
  readonly durationMs: number;
  readonly at: string;
  /** Each change it made live: where it was seen, and how long until HAProxy served it. */
  readonly propagation: readonly { readonly source: string; readonly ms: number }[];
}

export interface DashboardTraffic {
  /** Requests (connections for tcp backends) over every service's backends since the worker started. */
  readonly requests: number;
  readonly errors: number;
  /** Why HAProxy's stats are missing from this document, else null. */
  readonly statsError: string | null;
}
