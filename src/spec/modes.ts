import { InvalidParamError } from '../errors.js';
import { DEST_FIELDS, type FieldDef, SERVICE_FIELDS } from './fields.js';
import type { Destination, ServiceSpec } from './types.js';

function isSet(field: FieldDef, value: unknown): boolean {
  if (value === undefined || value === field.empty) return false;
  return !(Array.isArray(value) && value.length === 0);
}

/**
 * Refuses a field set where it does not apply (fields.ts `modes`): an HTTP-only parameter (a
 * path, a header rule, users) on a reqMode=tcp destination, or a tcp-only one on an http
 * destination. Never ignored: a silently dropped rule would route differently from what was asked.
 * `param` names the parameter as the caller received it (`users`, `servicePath.2`).
 */
export function checkModes(spec: ServiceSpec, param: (field: string, dest?: Destination) => string): void {
  for (const dest of spec.destinations) {
    const values = dest as unknown as Record<string, unknown>;
    for (const field of DEST_FIELDS) {
      if (!isSet(field, values[field.name])) continue;
      const name = param(field.name, dest);
      // reqMode=sni is tcp routed on the ClientHello's server name: serviceDomain says which.
      if (dest.reqMode === 'sni' && field.name === 'serviceDomain') continue;
      if (dest.reqMode !== 'http' && field.modes === undefined) throw new InvalidParamError(name, `${name} applies to http destinations; this one is reqMode=${dest.reqMode}`);
      if (dest.reqMode === 'http' && field.modes === 'tcp') throw new InvalidParamError(name, `${name} applies to reqMode=tcp and sni destinations only`);
    }
  }
  // A sticky cookie names a config-defined server; a DNS target's servers come from the resolver.
  if (spec.sessionType === 'sticky-server' && spec.destinations.some((d) => d.outboundHostname !== undefined)) {
    const name = param('sessionType');
    throw new InvalidParamError(name, `${name}=sticky-server does not work with outboundHostname (DNS targets have no config-defined servers to stick to)`);
  }
  if (!spec.destinations.every((d) => d.reqMode !== 'http')) return;
  const values = spec as unknown as Record<string, unknown>;
  for (const field of SERVICE_FIELDS) {
    if (field.modes === undefined && isSet(field, values[field.name])) {
      const name = param(field.name);
      throw new InvalidParamError(name, `${name} applies to http destinations; every destination of this service is reqMode=tcp or sni`);
    }
  }
}
