import { InvalidParamError, MissingParamError, NoRouteError, UnsupportedParamError } from '../errors.js';
import { checkBool, checkEnum, checkInt, checkName, describe } from './grammar.js';
import { DEST_FIELD_NAMES, DEST_FIELDS, type FieldDef, fieldContext, NOT_YET, RAW_CONFIG, SERVICE_FIELDS } from './fields.js';
import { checkModes } from './modes.js';
import type { Params } from './params.js';
import { type Destination, type PathType, REQ_MODES, type ServiceSpec } from './types.js';

export interface ParseOptions {
  readonly separator: string;
  /** Whether a user named in `users` without a password gets one from usersSecret or USERS (F16). */
  readonly passwordKnown?: (user: string, usersSecret: string | undefined) => boolean;
  /** HAProxy's HTTP listener ports (DEFAULT_PORTS + BIND_PORTS): a srcPort must be one of them. */
  readonly listenerPorts?: ReadonlySet<number>;
  /** The TLS listeners (`:ssl` ports): reqMode=sni services may share them with TLS termination. */
  readonly tlsPorts?: ReadonlySet<number>;
  /** Ports the proxy uses for something else (the API's PORT, STATS_PORT): a TCP srcPort must not be one. */
  readonly reservedPorts?: ReadonlyMap<number, string>;
  /** Defaults of srcPort and srcHttpsPort with httpsPort: DEFAULT_PORTS' first plain and first TLS port (80, 443). */
  readonly entryPorts?: { readonly plain?: number; readonly tls?: number };
  /** CA_FILE is set: verifyClientSsl needs it (no client certificate is ever asked for without). */
  readonly clientCa?: boolean;
}

export type ReconfigureRequest =
  | {
      readonly kind: 'upsert';
      readonly spec: ServiceSpec;
      /** `servicePath` exactly as received, echoed in the response like the original. */
      readonly rawServicePath: string;
      /** `serviceCert`: PEM content stored as a certificate named after the first domain (never echoed). */
      readonly serviceCert?: { readonly name: string; readonly pem: string };
    }
  | { readonly kind: 'remove'; readonly serviceName: string; readonly aclName?: string };

/**
 * How a change is carried out, the same for every endpoint that changes something: parsed in this
 * one place. `distribute=true` (which the Swarm Listener always sends) and `wait=all` answer once
 * every live replica has applied the change.
 */
export interface ChangeOptions {
  readonly distribute: boolean;
  readonly dryRun: boolean;
  readonly waitAll: boolean;
  /** `proxyInstanceName` as sent (FILTER_PROXY_INSTANCE_NAME compares it). */
  readonly proxyInstanceName?: string;
}

export function parseChangeOptions(params: Params): ChangeOptions {
  const distribute = flag(params, 'distribute');
  const wait = params.get('wait');
  if (wait !== undefined && wait !== 'all' && wait !== 'local') throw new InvalidParamError('wait', 'wait must be all or local');
  const instance = params.get('proxyInstanceName');
  return {
    distribute,
    dryRun: flag(params, 'dryRun'),
    waitAll: wait === 'all' || (distribute && wait !== 'local'),
    ...(instance === undefined ? {} : { proxyInstanceName: checkName('proxyInstanceName', instance) }),
  };
}

export function flag(params: Params, name: string): boolean {
  const raw = params.get(name);
  return raw === undefined ? false : checkBool(name, raw);
}

/** Parameters that make a destination exist (the original's rule, §4.4). */
const DEST_MARKERS = ['servicePath', 'port', 'serviceDomain', 'httpsPort'] as const;
const INDEXED = /^([A-Za-z]+)\.([0-9]+)$/;

function checkUnsupported(params: Params): void {
  for (const name of params.names()) {
    const base = INDEXED.exec(name)?.[1] ?? name;
    if (RAW_CONFIG.has(base)) throw new UnsupportedParamError(name, `${name} is not supported: it would put raw configuration into HAProxy`);
    if (NOT_YET.has(base)) throw new UnsupportedParamError(name, `${name} is not supported by this version yet; the service was not changed`);
  }
}

/** Finds which indexes 1..10 form destinations, answering 400 for bad or orphaned indexes (F9). */
function destinationIndexes(params: Params): number[] {
  const byIndex = new Map<number, string[]>();
  for (const name of params.names()) {
    const m = INDEXED.exec(name);
    if (!m) continue;
    const [, base = '', idx = ''] = m;
    if (!DEST_FIELD_NAMES.has(base) && !NOT_YET.has(base) && base !== 'reqPathSearch' && base !== 'reqPathReplace') continue; // unknown: ignored
    const n = Number(idx);
    if (!/^[1-9][0-9]?$/.test(idx) || n > 10) throw new InvalidParamError(name, `${name}: destination indexes run from 1 to 10`);
    byIndex.set(n, [...(byIndex.get(n) ?? []), name]);
  }
  const exists = (n: number) => DEST_MARKERS.some((m) => params.has(`${m}.${n}`));
  const found: number[] = [];
  for (let n = 1; n <= 10 && exists(n); n++) found.push(n);
  for (const [n, names] of [...byIndex].sort((a, b) => a[0] - b[0])) {
    if (n > found.length) {
      const first = [...names].sort()[0] ?? `servicePath.${n}`;
      throw new InvalidParamError(first, `${first} has no destination ${n}: indexes must be consecutive from 1 and each needs servicePath.${n}, port.${n} or serviceDomain.${n}`);
    }
  }
  return found;
}

/** The value of a field for one destination: `name.N`, else `name`, else an alias. */
function pick(params: Params, field: Pick<FieldDef, 'name' | 'aliases'>, index: number): [string, string | undefined] {
  for (const base of [field.name, ...(field.aliases ?? [])]) {
    const indexed = `${base}.${index}`;
    if (index > 0 && params.has(indexed)) return [indexed, params.get(indexed)];
    if (params.has(base)) return [base, params.get(base)];
  }
  return [field.name, undefined];
}

function parseDestination(params: Params, index: number, opts: ParseOptions): Destination {
  const [modeName, modeRaw] = pick(params, { name: 'reqMode' }, index);
  const reqMode = modeRaw === undefined ? 'http' : checkEnum(modeName, modeRaw, REQ_MODES);

  const out: Record<string, unknown> = { index, reqMode };
  let pathType: PathType = 'path_beg';
  for (const field of DEST_FIELDS) {
    const [param, raw] = pick(params, field, index);
    const value = raw === undefined ? field.empty : field.codec.parse(param, raw, fieldContext(opts.separator, pathType));
    if (field.name === 'pathType') pathType = value as PathType;
    if (value !== undefined) out[field.name] = value;
  }
  // The deprecated pair becomes the first reqPathSearchReplace pair.
  const [searchName, search] = pick(params, { name: 'reqPathSearch' }, index);
  const [, replace] = pick(params, { name: 'reqPathReplace' }, index);
  if (search !== undefined) {
    const pair = DEST_FIELDS.find((f) => f.name === 'reqPathSearchReplace')?.codec.parse(searchName, `${search},${replace ?? ''}`, fieldContext(opts.separator)) as string[];
    out.reqPathSearchReplace = [...pair, ...(out.reqPathSearchReplace as string[])];
  }
  if (out.outboundHostname !== undefined && out.port === undefined) {
    const [portName] = pick(params, { name: 'port' }, index);
    throw new InvalidParamError(portName, `outboundHostname needs ${portName}: the port to reach ${String(out.outboundHostname)} on`);
  }
  if (reqMode !== 'http') return tcpDestination(params, index, opts, out);
  const [srcHttpsName, srcHttpsRaw] = pick(params, { name: 'srcHttpsPort' }, index);
  if (out.httpsPort !== undefined) {
    // The original's defaults, taken from the listeners (80 and 443 with the default DEFAULT_PORTS).
    out.srcPort ??= opts.entryPorts?.plain ?? 80;
    out.srcHttpsPort ??= opts.entryPorts?.tls ?? 443;
  } else if (srcHttpsRaw !== undefined) {
    throw new InvalidParamError(srcHttpsName, `${srcHttpsName} is the entry port of the httpsPort backend; give httpsPort${index > 0 ? `.${index}` : ''} too`);
  }
  for (const [name, param] of [
    ['srcPort', pick(params, { name: 'srcPort' }, index)[0]],
    ['srcHttpsPort', srcHttpsName],
  ] as const) {
    const port = out[name] as number | undefined;
    if (port !== undefined && opts.listenerPorts && !opts.listenerPorts.has(port)) {
      const given = pick(params, { name }, index)[1] !== undefined;
      throw new InvalidParamError(
        param,
        `${param}=${port}${given ? '' : ' (its default with httpsPort)'} is not a port HAProxy listens on; add it to BIND_PORTS${given ? '' : ` or give ${param}`} (listening: ${[...opts.listenerPorts].join(', ')})`,
      );
    }
  }
  if (out.verifyClientSsl === true && opts.clientCa === false) {
    const [name] = pick(params, { name: 'verifyClientSsl' }, index);
    throw new InvalidParamError(name, `${name} needs CA_FILE: without it the proxy asks no client for a certificate`);
  }
  // An un-indexed httpsOnly=true applies to every destination (the original's rule).
  if (params.has('httpsOnly') && checkBool('httpsOnly', params.get('httpsOnly') ?? '')) out.httpsOnly = true;
  const dest = out as unknown as Destination;
  if (dest.servicePath.length === 0) {
    if (dest.serviceDomain.length === 0) {
      throw new NoRouteError(index > 0 ? `servicePath.${index}` : 'servicePath', 'servicePath or serviceDomain is required in http mode');
    }
    // A domain without a path routes every path (the original's rule).
    return { ...dest, servicePath: ['/'], pathType: 'path_beg' };
  }
  return dest;
}

/**
 * A reqMode=tcp destination: a frontend of its own on `srcPort`, which must not be an HTTP
 * listener. (Its HTTP-only fields are refused by checkModes once the whole spec is parsed.)
 */
function tcpDestination(params: Params, index: number, opts: ParseOptions, out: Record<string, unknown>): Destination {
  const [srcName] = pick(params, { name: 'srcPort' }, index);
  const port = out.srcPort as number | undefined;
  if (port === undefined) throw new InvalidParamError(srcName, `reqMode=tcp needs ${srcName}: the port HAProxy listens on for this service`);
  // A TLS listener is shared with SNI passthrough: what no server name claims is terminated there.
  const sharedTls = out.reqMode === 'sni' && opts.tlsPorts?.has(port) === true;
  if (opts.listenerPorts?.has(port) && !sharedTls) {
    throw new InvalidParamError(
      srcName,
      `${srcName}=${port} is an HTTP listener (DEFAULT_PORTS or BIND_PORTS); a TCP service needs a port of its own${out.reqMode === 'sni' ? ' (reqMode=sni may share a TLS listener, an :ssl port)' : ''}`,
    );
  }
  const reserved = opts.reservedPorts?.get(port);
  if (reserved !== undefined) throw new InvalidParamError(srcName, `${srcName}=${port} is ${reserved}; a TCP service needs a port of its own`);
  if (out.reqMode === 'sni' && (out.serviceDomain as string[]).length === 0) {
    const [domainName] = pick(params, { name: 'serviceDomain' }, index);
    throw new InvalidParamError(domainName, `reqMode=sni needs ${domainName}: the server names (SNI) routed to this service`);
  }
  return out as unknown as Destination;
}

/** Parses and validates a reconfigure request. Throws a DfpError naming the parameter at fault. */
export function parseReconfigure(params: Params, opts: ParseOptions): ReconfigureRequest {
  const rawName = params.get('serviceName');
  if (rawName === undefined) throw new MissingParamError('serviceName');
  const serviceName = checkName('serviceName', rawName);
  const aclRaw = params.get('aclName');
  const aclName = aclRaw === undefined ? serviceName : checkName('aclName', aclRaw);
  const replicasRaw = params.get('replicas');
  // replicas=0 from the Swarm Listener means "scaled to zero": a remove (vfarcic#344).
  if (replicasRaw !== undefined && checkInt('replicas', replicasRaw, 0, 1_000_000) === 0) {
    return { kind: 'remove', serviceName, ...(aclRaw === undefined ? {} : { aclName }) };
  }
  checkUnsupported(params);
  const out: Record<string, unknown> = { serviceName };
  for (const field of SERVICE_FIELDS) {
    const [param, raw] = pick(params, field, 0);
    const value = raw === undefined ? field.empty : field.codec.parse(param, raw, fieldContext(opts.separator));
    if (value !== undefined) out[field.name] = value;
  }
  out.aclName = aclName;
  const indexes = destinationIndexes(params);
  out.destinations = indexes.length > 0 ? indexes.map((n) => parseDestination(params, n, opts)) : [parseDestination(params, 0, opts)];
  const spec = out as unknown as ServiceSpec;
  checkModes(spec, (field, dest) => (dest === undefined ? field : pick(params, { name: field }, dest.index)[0]));
  for (const user of spec.users) {
    const [name = '', password] = user.split(/:(.*)/s);
    if (password === undefined && opts.passwordKnown && !opts.passwordKnown(name, spec.usersSecret)) {
      throw new InvalidParamError('users', `users: no password for ${describe(name)}: give name:password, or provide it through usersSecret or USERS`);
    }
  }
  const cert = params.get('serviceCert');
  return {
    kind: 'upsert',
    spec,
    rawServicePath: params.get('servicePath') ?? '',
    ...(cert === undefined ? {} : { serviceCert: { name: spec.destinations[0]?.serviceDomain[0] ?? serviceName, pem: cert.replace(/\\n/g, '\n') } }),
  };
}

export interface RemoveRequest {
  readonly serviceName: string;
  readonly aclName?: string;
}

export function parseRemove(params: Params): RemoveRequest {
  const rawName = params.get('serviceName');
  if (rawName === undefined) throw new MissingParamError('serviceName');
  const aclRaw = params.get('aclName');
  return { serviceName: checkName('serviceName', rawName), ...(aclRaw === undefined ? {} : { aclName: checkName('aclName', aclRaw) }) };
}
