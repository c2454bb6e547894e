import type { ServiceSpec } from '../spec/types.js';

/** What the API needs from the proxy; keeps HTTP concerns out of the pipeline and vice versa. */
/** What a change would do: `dryRun=true` on reconfigure and remove. */
export interface DryRunResult {
  readonly kind: 'runtime' | 'reload' | 'none';
  readonly diff: string;
  readonly commands: readonly string[];
}

export interface ChangeOptions {
  readonly dryRun?: boolean;
  /** Answer only once every live replica has applied the change (`wait=all`, `distribute=true`). */
  readonly waitAll?: boolean;
}

export interface ProxyCore {
  /** Resolves once the service's route is live (or, with dryRun, says what would change). */
  reconfigure(spec: ServiceSpec, options?: ChangeOptions): Promise<{ model: Record<string, unknown>; warnings: string[]; dryRun?: DryRunResult }>;
  /** Removes by serviceName, or by aclName when no service has that name. */
  remove(serviceName: string, aclName?: string, options?: ChangeOptions): Promise<{ removed: boolean; serviceName: string; dryRun?: DryRunResult }>;
  reload(recreate: boolean): Promise<void>;
  liveConfig(): string;
  servicesModel(): Record<string, unknown>;
  status(): Promise<Record<string, unknown>>;
  isReady(): boolean;
}
