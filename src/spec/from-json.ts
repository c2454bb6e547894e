import { InvalidParamError } from '../errors.js';
import { checkEnum, checkName, checkPath, MAX_ITEMS } from './grammar.js';
import { type Destination, PATH_TYPES, type ServiceSpec } from './types.js';

/**
 * A ServiceSpec read back from shared storage (Consul KV), checked field by field with the same
 * grammar as a request: anyone with KV write access could have put it there, and it goes into
 * haproxy.cfg. Throws InvalidParamError naming the field.
 */
export function specFromJson(raw: unknown): ServiceSpec {
  const o = object(raw, 'spec');
  const serviceName = checkName('serviceName', string(o.serviceName, 'serviceName'));
  const aclName = checkName('aclName', string(o.aclName, 'aclName'));
  const serviceColor = o.serviceColor === undefined ? undefined : checkName('serviceColor', string(o.serviceColor, 'serviceColor'));
  if (typeof o.skipCheck !== 'boolean') throw new InvalidParamError('skipCheck', 'skipCheck must be a boolean');
  if (!Array.isArray(o.destinations) || o.destinations.length === 0 || o.destinations.length > 11) {
    throw new InvalidParamError('destinations', 'destinations must be a list of 1 to 11 entries');
  }
  const destinations = o.destinations.map((d: unknown, i: number): Destination => {
    const dest = object(d, `destinations[${i}]`);
    const index = dest.index;
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 10) throw new InvalidParamError('index', 'index must be 0..10');
    const pathType = checkEnum('pathType', string(dest.pathType, 'pathType'), PATH_TYPES);
    if (!Array.isArray(dest.servicePath) || dest.servicePath.length === 0 || dest.servicePath.length > MAX_ITEMS) {
      throw new InvalidParamError('servicePath', 'servicePath must be a non-empty list');
    }
    const servicePath = dest.servicePath.map((p: unknown) => checkPath('servicePath', string(p, 'servicePath'), pathType));
    if (dest.reqMode !== 'http') throw new InvalidParamError('reqMode', 'reqMode must be http');
    const port = dest.port;
    if (port !== undefined && (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)) {
      throw new InvalidParamError('port', 'port must be 1..65535');
    }
    return { index, servicePath, pathType, reqMode: 'http', ...(port === undefined ? {} : { port }) };
  });
  return { serviceName, aclName, ...(serviceColor === undefined ? {} : { serviceColor }), skipCheck: o.skipCheck, destinations };
}

function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidParamError(what, `${what} must be an object`);
  return v as Record<string, unknown>;
}

function string(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new InvalidParamError(what, `${what} must be a string`);
  return v;
}

/** Canonical JSON of a spec: keys in a fixed order, so equal specs serialise to equal bytes. */
export function specToJson(spec: ServiceSpec): string {
  return JSON.stringify({
    serviceName: spec.serviceName,
    aclName: spec.aclName,
    ...(spec.serviceColor === undefined ? {} : { serviceColor: spec.serviceColor }),
    skipCheck: spec.skipCheck,
    destinations: [...spec.destinations]
      .sort((a, b) => a.index - b.index)
      .map((d) => ({ index: d.index, servicePath: d.servicePath, pathType: d.pathType, ...(d.port === undefined ? {} : { port: d.port }), reqMode: d.reqMode })),
  });
}
