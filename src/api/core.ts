import type { ServiceSpec } from '../spec/types.js';

/** What the API needs from the proxy; keeps HTTP concerns out of the pipeline and vice versa. */
export interface ProxyCore {
  /** Resolves once the service's route is live. */
  reconfigure(spec: ServiceSpec): Promise<{ model: Record<string, unknown>; warnings: string[] }>;
  /** Removes by serviceName, or by aclName when no service has that name. */
  remove(serviceName: string, aclName?: string): Promise<{ removed: boolean; serviceName: string }>;
  reload(recreate: boolean): Promise<void>;
  liveConfig(): string;
  servicesModel(): Record<string, unknown>;
  status(): Record<string, unknown>;
  isReady(): boolean;
}
