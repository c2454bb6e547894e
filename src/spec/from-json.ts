import { InvalidParamError } from '../errors.js';
import { checkModes } from './modes.js';
import { DEST_FIELDS, type FieldDef, fieldContext, SERVICE_FIELDS } from './fields.js';
import { checkName } from './grammar.js';
import type { Destination, PathType, ServiceSpec } from './types.js';

/**
 * Specs as stored JSON (Consul KV), both ways, derived from the field table. Stored documents hold
 * only the values that differ from a field's empty value, so they stay small at 10,000 services and
 * a field added later reads back as its default. Reading checks every field with the same grammar as
 * a request: anyone with KV write access could have written it, and it goes into haproxy.cfg.
 */
export function specFromJson(raw: unknown, separator = ','): ServiceSpec {
  const o = object(raw, 'spec');
  const out: Record<string, unknown> = { serviceName: checkName('serviceName', str(o.serviceName, 'serviceName')) };
  readFields(SERVICE_FIELDS, o, out, separator, 'path_beg');
  out.aclName ??= out.serviceName;
  if (!Array.isArray(o.destinations) || o.destinations.length === 0 || o.destinations.length > 11) {
    throw new InvalidParamError('destinations', 'destinations must be a list of 1 to 11 entries');
  }
  out.destinations = o.destinations.map((d: unknown, i: number): Destination => {
    const dest = object(d, `destinations[${i}]`);
    const index = dest.index;
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 10) throw new InvalidParamError('index', 'index must be 0..10');
    if (dest.reqMode !== 'http' && dest.reqMode !== 'tcp' && dest.reqMode !== 'sni') throw new InvalidParamError('reqMode', 'reqMode must be http, tcp or sni');
    const parsed: Record<string, unknown> = { index, reqMode: dest.reqMode };
    readFields(DEST_FIELDS, dest, parsed, separator, 'path_beg');
    if (parsed.outboundHostname !== undefined && parsed.port === undefined) throw new InvalidParamError('port', 'outboundHostname needs port');
    if (dest.reqMode !== 'http') {
      if (parsed.srcPort === undefined) throw new InvalidParamError('srcPort', `a reqMode=${dest.reqMode} destination needs srcPort`);
      if (dest.reqMode === 'sni' && (parsed.serviceDomain as string[]).length === 0) throw new InvalidParamError('serviceDomain', 'a reqMode=sni destination needs serviceDomain');
      return parsed as unknown as Destination;
    }
    if ((parsed.servicePath as string[]).length === 0) throw new InvalidParamError('servicePath', 'servicePath must be a non-empty list');
    // The writer's parse.ts fills both entry ports with httpsPort; without them the two backends
    // would claim the same routes and the https one would never be used.
    if (parsed.httpsPort !== undefined && (parsed.srcPort === undefined || parsed.srcHttpsPort === undefined)) {
      throw new InvalidParamError('srcHttpsPort', 'a destination with httpsPort needs srcPort and srcHttpsPort');
    }
    if (parsed.httpsPort === undefined && parsed.srcHttpsPort !== undefined) throw new InvalidParamError('srcHttpsPort', 'srcHttpsPort needs httpsPort');
    return parsed as unknown as Destination;
  });
  checkModes(out as unknown as ServiceSpec, (field) => field);
  return out as unknown as ServiceSpec;
}

function readFields(fields: readonly FieldDef[], from: Record<string, unknown>, to: Record<string, unknown>, separator: string, pathType: PathType): void {
  let type = pathType;
  for (const field of fields) {
    const stored = from[field.name];
    const value = stored === undefined ? field.empty : field.codec.check(field.name, stored, fieldContext(separator, type));
    if (field.name === 'pathType') type = value as PathType;
    if (value !== undefined) to[field.name] = value;
  }
}

function isEmpty(field: FieldDef, value: unknown): boolean {
  if (value === undefined) return true;
  if (Array.isArray(value) && Array.isArray(field.empty)) return value.length === 0;
  return value === field.empty;
}

function compact(fields: readonly FieldDef[], from: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const source = from as Record<string, unknown>;
  for (const field of fields) {
    if (!isEmpty(field, source[field.name])) out[field.name] = source[field.name];
  }
  return out;
}

/** Canonical JSON of a spec: keys in table order, empty values left out, so equal specs give equal bytes. */
export function specToJson(spec: ServiceSpec): string {
  return JSON.stringify({
    serviceName: spec.serviceName,
    ...compact(SERVICE_FIELDS, spec),
    destinations: [...spec.destinations].sort((a, b) => a.index - b.index).map((d) => ({ index: d.index, reqMode: d.reqMode, ...compact(DEST_FIELDS, d) })),
  });
}

function object(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidParamError(what, `${what} must be an object`);
  return v as Record<string, unknown>;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new InvalidParamError(what, `${what} must be a string`);
  return v;
}
