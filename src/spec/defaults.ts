import { DEST_FIELDS, SERVICE_FIELDS } from './fields.js';
import type { Destination, ServiceSpec } from './types.js';

/** Specs built in code (tests, benchmarks): every field at its empty value but the ones given. */

type DestInput = Partial<Destination> & Pick<Destination, 'servicePath'>;

/** A destination with every field at its empty value but the ones given. */
export function dest(d: DestInput): Destination {
  const out: Record<string, unknown> = { index: 0, reqMode: 'http' };
  for (const f of DEST_FIELDS) if (f.empty !== undefined) out[f.name] = f.empty;
  return { ...(out as unknown as Destination), ...d };
}

/** A spec with every field at its empty value but the ones given; aclName defaults to serviceName. */
export function spec(s: Partial<Omit<ServiceSpec, 'destinations'>> & { serviceName: string; destinations: DestInput[] }): ServiceSpec {
  const out: Record<string, unknown> = {};
  for (const f of SERVICE_FIELDS) if (f.empty !== undefined) out[f.name] = f.empty;
  return { ...(out as unknown as ServiceSpec), aclName: s.serviceName, ...s, destinations: s.destinations.map(dest) };
}
