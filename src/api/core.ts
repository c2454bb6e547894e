import type { CertListing, CertOutcome } from '../certs/manager.js';
import type { DashboardData } from '../dashboard/model.js';
import type { ServiceSpec } from '../spec/types.js';

/** What the API needs from the proxy; keeps HTTP concerns out of the pipeline and vice versa. */
/** What a change would do: `dryRun=true` on reconfigure and remove. */
export interface DryRunResult {
  readonly kind: 'runtime' | 'reload' | 'none';
  readonly diff: string;
  readonly commands: readonly string[];
  /** With kind `reload`: what forced it (sections of haproxy.cfg, `credentials file`, `no spare backend left`, ...). */
  readonly reloadBecause?: readonly string[];
}

export type ChangeOptions = Pick<import('../spec/parse.js').ChangeOptions, 'dryRun' | 'waitAll'>;

export interface ProxyCore {
  /** Resolves once the service's route is live (or, with dryRun, says what would change). */
  reconfigure(spec: ServiceSpec, options?: Partial<ChangeOptions>, cert?: { readonly name: string; readonly pem: string }): Promise<{ warnings: string[]; dryRun?: DryRunResult }>;
  /** Removes by serviceName, or by aclName when no service has that name. */
  remove(serviceName: string, aclName?: string, options?: Partial<ChangeOptions>): Promise<{ removed: boolean; serviceName: string; dryRun?: DryRunResult }>;
  reload(recreate: boolean): Promise<void>;
  /** `reload?fromListener=true`: asks the Swarm Listener to send every notification again. */
  notifyListener?(): Promise<void>;
  /**
   * Stores a certificate (PEM chain + key); 400 naming `parameter` when it is not one. With dryRun,
   * what it would do; with waitAll, every live replica's result.
   */
  putCert(name: string, pem: string, parameter?: string, options?: Partial<ChangeOptions>): Promise<CertOutcome>;
  /** Deletes a stored certificate (404 naming certName when there is none); dryRun and waitAll as putCert. */
  deleteCert(name: string, options?: Partial<ChangeOptions>): Promise<CertOutcome>;
  /** Certificate metadata for the `certs` endpoint: never key material. */
  certList(): CertListing[];
  liveConfig(): string;
  /** Every configured service, by serviceName. */
  services(): ServiceSpec[];
  /** Where a service comes from (`api`, or `env` with the variables that define it); shown beside its model. */
  sourceOf?(serviceName: string): Record<string, unknown>;
  status(): Promise<Record<string, unknown>>;
  /** `GET /metrics`: the Prometheus text; undefined when metrics are off (METRICS=false). */
  metricsText?(): Promise<{ contentType: string; text: string } | undefined>;
  /** `metrics`: HAProxy's statistics CSV, this replica's or (distribute) every live replica's. */
  haproxyStats?(distribute: boolean): Promise<string>;
  /** `GET /ui/data`: what the dashboard shows (services, instances, backends' traffic, replicas, applies). */
  dashboard?(): Promise<DashboardData>;
  isReady(): boolean;
}
