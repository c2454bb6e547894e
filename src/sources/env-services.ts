import { DfpError, SettingsError } from '../errors.js';
import { DEST_FIELDS, SERVICE_FIELDS } from '../spec/fields.js';
import { EMPTY_STATE, withService } from '../state/desired-state.js';
import { Params } from '../spec/params.js';
import { type ParseOptions, parseReconfigure } from '../spec/parse.js';
import type { ServiceSpec } from '../spec/types.js';

/** A service defined by `DFP_SERVICE_*` variables, with the prefix that defines it (for messages). */
export interface EnvService {
  readonly spec: ServiceSpec;
  /** `DFP_SERVICE_` or `DFP_SERVICE_<i>_`. */
  readonly prefix: string;
}

type Env = Readonly<Record<string, string | undefined>>;

/** `SERVICE_PATH` -> `servicePath`, `REQ_PATH_SEARCH_REPLACE` -> `reqPathSearchReplace`. */
function paramName(upper: string): string {
  return upper.toLowerCase().replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * Services from the environment (the original's §6.8), so a compose file alone configures a proxy:
 * `DFP_SERVICE_<PARAM>` defines one service, `DFP_SERVICE_<i>_<PARAM>` (i = 1, 2, …) more, up to
 * the first i without `_SERVICE_NAME`. Parameters are the API's in upper snake case, with the same
 * grammar (parse.ts); `_N` ends a destination's parameter (`DFP_SERVICE_1_PORT_2`). Unlike the API,
 * the un-indexed destination (when `SERVICE_PATH`, `PORT` or `SERVICE_DOMAIN` is set) is a
 * destination of its own beside the indexed ones, and an indexed destination needs `PORT_N` with
 * `SERVICE_PATH_N` (or `SERVICE_DOMAIN_N`, or `REQ_MODE_N=tcp`); scanning stops at the first N
 * without. Unknown names are refused: a misspelt variable must not be ignored. `REQ_MODE` defaults to `defaultProtocol` (DEFAULT_PROTOCOL). Anything invalid is a
 * SettingsError naming the variable: the proxy does not start.
 */
export function envServices(env: Env, opts: ParseOptions, defaultProtocol: 'http' | 'tcp' = 'http'): EnvService[] {
  const out: EnvService[] = [];
  const first = serviceAt(env, 'DFP_SERVICE_', opts, defaultProtocol, true);
  if (first) out.push(first);
  for (let i = 1; env[`DFP_SERVICE_${i}_SERVICE_NAME`] !== undefined && env[`DFP_SERVICE_${i}_SERVICE_NAME`] !== ''; i++) {
    const s = serviceAt(env, `DFP_SERVICE_${i}_`, opts, defaultProtocol, false);
    if (s) out.push(s);
  }
  const names = new Map<string, string>();
  let state = EMPTY_STATE;
  for (const s of out) {
    const other = names.get(s.spec.serviceName);
    if (other) throw new SettingsError(`${s.prefix}SERVICE_NAME`, `service ${s.spec.serviceName} is also defined by ${other}SERVICE_NAME`);
    names.set(s.spec.serviceName, s.prefix);
    // Together they must fit (aclNames, backend names, TCP ports), or start-up stops here.
    try {
      state = withService(state, s.spec, []);
    } catch (err) {
      if (!(err instanceof DfpError)) throw err;
      throw new SettingsError(`${s.prefix}${upperSnake(err.parameter ?? 'SERVICE_NAME')}`, err.message);
    }
  }
  return out;
}

/** `srcPort.2` -> `SRC_PORT_2`. */
function upperSnake(param: string): string {
  return param
    .replace(/\.([0-9]+)$/, '_$1')
    .replace(/[A-Z]/g, (c) => `_${c}`)
    .toUpperCase();
}

/** Parameter names a service from the environment may use (the API's, minus request options). */
const KNOWN = new Set<string>(['serviceName', 'reqMode', 'reqPathSearch', 'reqPathReplace', ...[...SERVICE_FIELDS, ...DEST_FIELDS].flatMap((f) => [f.name, ...(f.aliases ?? [])])]);
const SERVICE_LEVEL = new Set<string>(['serviceName', ...SERVICE_FIELDS.flatMap((f) => [f.name, ...(f.aliases ?? [])])]);

function serviceAt(env: Env, prefix: string, opts: ParseOptions, defaultProtocol: 'http' | 'tcp', unnumbered: boolean): EnvService | undefined {
  /** Parameter -> the variable it came from, for messages. */
  const origin = new Map<string, string>();
  const plain: [string, string][] = [];
  const indexed = new Map<number, [string, string][]>();
  for (const [key, value] of Object.entries(env)) {
    if (!key.startsWith(prefix) || value === undefined || value === '') continue;
    const rest = key.slice(prefix.length);
    // DFP_SERVICE_1_… belongs to service 1, not to the unnumbered one.
    if (unnumbered && /^[0-9]/.test(rest)) continue;
    const m = /^([A-Z][A-Z0-9_]*?)(?:_([0-9]+))?$/.exec(rest);
    if (!m?.[1]) throw new SettingsError(key, 'not a DFP_SERVICE parameter (upper snake case, optionally ending in _N)');
    const param = paramName(m[1]);
    if (!KNOWN.has(param)) throw new SettingsError(key, `${m[1]} is not a parameter of a service (see docs/api.md, reconfigure)`);
    if (m[2] === undefined) {
      plain.push([param, value]);
      origin.set(param, key);
    } else {
      const n = Number(m[2]);
      indexed.set(n, [...(indexed.get(n) ?? []), [`${param}.${n}`, value]]);
      origin.set(`${param}.${n}`, key);
    }
  }
  if (plain.length === 0 && indexed.size === 0) return undefined;
  const value = (pairs: readonly [string, string][] | undefined, name: string) => pairs?.find(([p]) => p.split('.')[0] === name)?.[1];
  // Destination N exists with PORT_N and SERVICE_PATH_N (the original's rule), or with PORT_N and
  // SERVICE_DOMAIN_N or REQ_MODE_N=tcp (ours: a TCP destination has no path). Scanning stops at
  // the first N that has neither.
  const exists = (n: number) => {
    const pairs = indexed.get(n);
    return value(pairs, 'port') !== undefined && (value(pairs, 'servicePath') !== undefined || value(pairs, 'serviceDomain') !== undefined || value(pairs, 'reqMode') === 'tcp');
  };
  const destinations: number[] = [];
  for (let n = 1; n <= 10 && exists(n); n++) destinations.push(n);
  // Each destination's reqMode: its own REQ_MODE(_N), else DEFAULT_PROTOCOL.
  const reqMode = value(plain, 'reqMode') ?? defaultProtocol;
  for (const n of destinations) if (value(indexed.get(n), 'reqMode') === undefined) indexed.get(n)?.push([`reqMode.${n}`, reqMode]);
  if (value(plain, 'reqMode') === undefined) plain.push(['reqMode', defaultProtocol]);
  const parse = (pairs: [string, string][]) => {
    try {
      const r = parseReconfigure(new Params(pairs), opts);
      if (r.kind !== 'upsert') throw new SettingsError(origin.get('replicas') ?? `${prefix}REPLICAS`, 'a service from the environment cannot be removed (replicas=0)');
      return r.spec;
    } catch (err) {
      if (err instanceof SettingsError || !(err instanceof DfpError)) throw err;
      const variable = (err.parameter && origin.get(err.parameter)) ?? `${prefix}${upperSnake(err.parameter ?? 'SERVICE_NAME')}`;
      throw new SettingsError(variable, err.message);
    }
  };
  const unindexed = plain.some(([p]) => p === 'servicePath' || p === 'port' || p === 'serviceDomain');
  // The un-indexed destination is one of its own here, not the indexed ones' fallback: they share
  // only the service's parameters.
  const shared = plain.filter(([p]) => SERVICE_LEVEL.has(p));
  const withIndexes = destinations.length > 0 ? parse([...shared, ...destinations.flatMap((n) => indexed.get(n) ?? [])]) : undefined;
  const base = unindexed || !withIndexes ? parse(plain) : undefined;
  const spec: ServiceSpec = base && withIndexes ? { ...base, destinations: [...base.destinations, ...withIndexes.destinations] } : ((base ?? withIndexes) as ServiceSpec);
  return { spec, prefix };
}
