import { InvalidParamError, MissingParamError, NoRouteError, UnsupportedParamError } from '../errors.js';
import { checkBool, checkEnum, checkInt, checkName, checkPath, splitList } from './grammar.js';
import type { Params } from './params.js';
import { type Destination, PATH_TYPES, REQ_MODES, type ServiceSpec } from './types.js';

export interface ParseOptions {
  readonly separator: string;
}

export type ReconfigureRequest =
  | {
      readonly kind: 'upsert';
      readonly spec: ServiceSpec;
      readonly distribute: boolean;
      /** `servicePath` exactly as received, echoed in the response like the original. */
      readonly rawServicePath: string;
    }
  | ({ readonly kind: 'remove' } & RemoveRequest);

export interface RemoveRequest {
  readonly serviceName: string;
  readonly aclName?: string;
  readonly distribute: boolean;
}

/** Per-destination parameters we implement; each may carry a `.N` index (1..10). */
const DEST_PARAMS = new Set(['servicePath', 'pathType', 'port', 'reqMode']);
/** Parameters that make a destination exist (the original's rule, §4.4). */
const DEST_MARKERS = ['servicePath', 'port', 'serviceDomain', 'httpsPort'] as const;

/**
 * Known parameters of the original that this version does not implement yet. Ignoring them would
 * silently route differently (no auth, no TLS redirect, wrong host), so they are refused by name.
 */
const NOT_YET = new Set([
  'serviceDomain',
  'servicePathExclude',
  'srcPort',
  'httpsPort',
  'srcHttpsPort',
  'httpsOnly',
  'httpsRedirectCode',
  'denyHttp',
  'redirectFromDomain',
  'redirectWhenHttpProto',
  'redirectUnlessHttpsProto',
  'users',
  'usersSecret',
  'usersPassEncrypted',
  'ignoreAuthorization',
  'addReqHeader',
  'setReqHeader',
  'delReqHeader',
  'addResHeader',
  'setResHeader',
  'delResHeader',
  'addHeader',
  'setHeader',
  'serviceHeader',
  'userAgent',
  'allowedMethods',
  'deniedMethods',
  'reqPathSearchReplace',
  'reqPathSearch',
  'reqPathReplace',
  'outboundHostname',
  'serviceCert',
  'sessionType',
  'timeoutServer',
  'timeoutTunnel',
  'timeoutClient',
  'verifyClientSsl',
  'checkTcp',
  'clitcpka',
  'isDefaultBackend',
  'connectionMode',
  'compressionAlgo',
  'compressionType',
  'serviceDomainAlgo',
  'serviceDomainMatchAll',
  'sslVerifyNone',
  'serviceGroup',
  'balanceGroup',
  'discoveryType',
]);

/** Raw HAProxy configuration from a request: never accepted (config injection by design). */
const RAW_CONFIG = new Set(['templateFePath', 'templateBePath', 'consulTemplateFePath', 'consulTemplateBePath', 'backendExtra']);

const INDEXED = /^([A-Za-z]+)\.([0-9]+)$/;

function checkUnsupported(params: Params): void {
  for (const name of params.names()) {
    const base = INDEXED.exec(name)?.[1] ?? name;
    if (RAW_CONFIG.has(base)) {
      throw new UnsupportedParamError(name, `${name} is not supported: it would put raw configuration into HAProxy`);
    }
    if (NOT_YET.has(base)) {
      throw new UnsupportedParamError(name, `${name} is not supported by this version yet; the service was not changed`);
    }
  }
}

/** Finds which indexes 1..10 form destinations, answering 400 for bad or orphaned indexes (F9). */
function destinationIndexes(params: Params): number[] {
  const byIndex = new Map<number, string[]>();
  for (const name of params.names()) {
    const m = INDEXED.exec(name);
    if (!m) continue;
    const [, base = '', idx = ''] = m;
    if (!DEST_PARAMS.has(base) && !NOT_YET.has(base)) continue; // unknown: ignored like the original
    const n = Number(idx);
    if (!/^[1-9][0-9]?$/.test(idx) || n > 10) {
      throw new InvalidParamError(name, `${name}: destination indexes run from 1 to 10`);
    }
    byIndex.set(n, [...(byIndex.get(n) ?? []), name]);
  }
  const exists = (n: number) => DEST_MARKERS.some((m) => params.has(`${m}.${n}`));
  const found: number[] = [];
  for (let n = 1; n <= 10 && exists(n); n++) found.push(n);
  const last = found.length;
  for (const [n, names] of [...byIndex].sort((a, b) => a[0] - b[0])) {
    if (n > last) {
      const first = [...names].sort()[0] ?? `servicePath.${n}`;
      throw new InvalidParamError(
        first,
        `${first} has no destination ${n}: indexes must be consecutive from 1 and each needs servicePath.${n} or port.${n}`,
      );
    }
  }
  return found;
}

function parseDestination(params: Params, index: number, opts: ParseOptions): Destination {
  // An indexed value falls back to the un-indexed one (the original's rule).
  const pick = (base: string): [string, string | undefined] => {
    const indexed = index > 0 ? `${base}.${index}` : base;
    if (params.has(indexed)) return [indexed, params.get(indexed)];
    return [base, params.get(base)];
  };
  const [modeName, modeRaw] = pick('reqMode');
  const reqMode = modeRaw === undefined ? 'http' : checkEnum(modeName, modeRaw, REQ_MODES);
  if (reqMode !== 'http') {
    throw new UnsupportedParamError(modeName, `${modeName}=${reqMode} is not supported by this version yet; only http`);
  }
  const [typeName, typeRaw] = pick('pathType');
  const pathType = typeRaw === undefined ? 'path_beg' : checkEnum(typeName, typeRaw, PATH_TYPES);
  const [pathName, pathRaw] = pick('servicePath');
  if (pathRaw === undefined) {
    throw new NoRouteError(
      index > 0 ? `servicePath.${index}` : 'servicePath',
      `servicePath is required in http mode (serviceDomain-only routes are not supported yet)`,
    );
  }
  const servicePath = splitList(pathName, pathRaw, opts.separator).map((p) => checkPath(pathName, p, pathType));
  const [portName, portRaw] = pick('port');
  const dest: Destination = {
    index,
    servicePath: [...new Set(servicePath)],
    pathType,
    reqMode,
    ...(portRaw === undefined ? {} : { port: checkInt(portName, portRaw, 1, 65535) }),
  };
  return dest;
}

/** Parses and validates a reconfigure request. Throws a DfpError naming the parameter at fault. */
export function parseReconfigure(params: Params, opts: ParseOptions): ReconfigureRequest {
  const rawName = params.get('serviceName');
  if (rawName === undefined) throw new MissingParamError('serviceName');
  const serviceName = checkName('serviceName', rawName);
  const distributeRaw = params.get('distribute');
  const distribute = distributeRaw === undefined ? false : checkBool('distribute', distributeRaw);
  const aclRaw = params.get('aclName');
  const aclName = aclRaw === undefined ? serviceName : checkName('aclName', aclRaw);
  const replicasRaw = params.get('replicas');
  // replicas=0 from the Swarm Listener means "scaled to zero": a remove (vfarcic#344).
  if (replicasRaw !== undefined && checkInt('replicas', replicasRaw, 0, 1_000_000) === 0) {
    return { kind: 'remove', serviceName, distribute, ...(aclRaw === undefined ? {} : { aclName }) };
  }
  checkUnsupported(params);
  const colorRaw = params.get('serviceColor');
  const skipRaw = params.get('skipCheck');
  const indexes = destinationIndexes(params);
  const destinations = indexes.length > 0 ? indexes.map((n) => parseDestination(params, n, opts)) : [parseDestination(params, 0, opts)];
  const spec: ServiceSpec = {
    serviceName,
    aclName,
    ...(colorRaw === undefined ? {} : { serviceColor: checkName('serviceColor', colorRaw) }),
    skipCheck: skipRaw === undefined ? false : checkBool('skipCheck', skipRaw),
    destinations,
  };
  return { kind: 'upsert', spec, distribute, rawServicePath: params.get('servicePath') ?? '' };
}

export function parseRemove(params: Params): RemoveRequest {
  const rawName = params.get('serviceName');
  if (rawName === undefined) throw new MissingParamError('serviceName');
  const aclRaw = params.get('aclName');
  const distributeRaw = params.get('distribute');
  return {
    serviceName: checkName('serviceName', rawName),
    ...(aclRaw === undefined ? {} : { aclName: checkName('aclName', aclRaw) }),
    distribute: distributeRaw === undefined ? false : checkBool('distribute', distributeRaw),
  };
}
