/**
 * The desired state of one service: what a reconfigure request asked for, validated and typed.
 * Everything in a ServiceSpec has passed the grammar in spec/grammar.ts, so the renderer may
 * write it into haproxy.cfg as is. Specs are plain JSON (they are persisted and compared).
 */

export const PATH_TYPES = [
  'path',
  'path_beg',
  'path_dir',
  'path_dom',
  'path_end',
  'path_len',
  'path_reg',
  'path_sub',
] as const;
export type PathType = (typeof PATH_TYPES)[number];

export const REQ_MODES = ['http', 'tcp', 'sni'] as const;
export type ReqMode = (typeof REQ_MODES)[number];

export interface Destination {
  /** 0 for the un-indexed destination, 1..10 for `param.N`. Appears in ACL and backend names. */
  readonly index: number;
  readonly servicePath: readonly string[];
  readonly pathType: PathType;
  /** The service's internal port. Optional with Consul: server lines use Consul's port. */
  readonly port?: number;
  readonly reqMode: 'http';
}

export interface ServiceSpec {
  readonly serviceName: string;
  /** Names ACLs and backends and orders rules; defaults to serviceName. */
  readonly aclName: string;
  /** Blue/green: instances are looked up as `<serviceName>-<serviceColor>`. */
  readonly serviceColor?: string;
  /** Omit ` check` on server lines. */
  readonly skipCheck: boolean;
  readonly destinations: readonly Destination[];
}

/** The Consul service whose instances back this spec. */
export function consulServiceName(spec: Pick<ServiceSpec, 'serviceName' | 'serviceColor'>): string {
  return spec.serviceColor ? `${spec.serviceName}-${spec.serviceColor}` : spec.serviceName;
}

/** HAProxy backend name, following the original's `<aclName>-be<port>_<index>` pattern. */
export function backendName(spec: Pick<ServiceSpec, 'aclName'>, dest: Pick<Destination, 'port' | 'index'>): string {
  return `${spec.aclName}-be${dest.port ?? ''}_${dest.index}`;
}
