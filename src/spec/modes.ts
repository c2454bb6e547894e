import { InvalidParamError } from '../errors.js';
import { checkDnsHost, DEST_FIELDS, type FieldDef, SERVICE_FIELDS } from './fields.js';
import { consulServiceName, type Destination, dnsTarget, type ServiceSpec } from './types.js';

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
  // A DNS target has no other source for the port; its name must be one a resolver can answer.
  for (const dest of spec.destinations) {
    if (dnsTarget(spec, dest) !== undefined && dest.port === undefined) {
      const name = param('port', dest);
      throw new InvalidParamError(name, `${name} is required${dest.index > 0 ? ` for destination ${dest.index}` : ''}: ${dest.outboundHostname !== undefined ? 'outboundHostname' : 'discoveryType=dns'} routes to a DNS name, and only ${name} says which port`);
    }
  }
  if (spec.discoveryType === 'dns') checkDnsHost(param('serviceName'), consulServiceName(spec));
  // A sticky cookie names a config-defined server; a DNS target's servers come from the resolver.
  if (spec.sessionType === 'sticky-server' && spec.destinations.some((d) => dnsTarget(spec, d) !== undefined)) {
    const name = param('sessionType');
    throw new InvalidParamError(name, `${name}=sticky-server does not work with DNS targets (outboundHostname, discoveryType=dns: DNS targets have no config-defined servers to stick to)`);
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
