import type { ServiceSpec } from '../spec/types.js';

/** The original's service model field names (PascalCase), as reconfigure and config?type=json show it. */
export function serviceModel(spec: ServiceSpec): Record<string, unknown> {
  return {
    ServiceName: spec.serviceName,
    AclName: spec.aclName,
    ServiceColor: spec.serviceColor ?? '',
    SkipCheck: spec.skipCheck,
    ServiceDest: spec.destinations.map((d) => ({
      Index: d.index,
      ServicePath: d.servicePath,
      PathType: d.pathType,
      Port: d.port === undefined ? '' : String(d.port),
      ReqMode: d.reqMode,
    })),
  };
}
