import { DfpError, SettingsError } from '../errors.js';
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
 * the un-indexed destination (when `SERVICE_PATH` or `PORT` is set) is kept besides the indexed ones,
 * and an indexed destination needs `SERVICE_PATH_N` and `PORT_N` (scanning stops at the first N
 * without both). `REQ_MODE` defaults to `defaultProtocol` (DEFAULT_PROTOCOL). Anything invalid is a
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
  for (const s of out) {
    const other = names.get(s.spec.serviceName);
    if (other) throw new SettingsError(`${s.prefix}SERVICE_NAME`, `service ${s.spec.serviceName} is also defined by ${other}SERVICE_NAME`);
    names.set(s.spec.serviceName, s.prefix);
  }
  return out;
}

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
  const has = (pairs: readonly [string, string][] | undefined, name: string) => pairs?.some(([p]) => p.split('.')[0] === name) ?? false;
  const destinations: number[] = [];
  for (let n = 1; n <= 10 && has(indexed.get(n), 'servicePath') && has(indexed.get(n), 'port'); n++) destinations.push(n);
  if (!plain.some(([p]) => p === 'reqMode')) plain.push(['reqMode', defaultProtocol]);
  const parse = (pairs: [string, string][]) => {
    try {
      const r = parseReconfigure(new Params(pairs), opts);
      if (r.kind !== 'upsert') throw new SettingsError(origin.get('replicas') ?? `${prefix}REPLICAS`, 'a service from the environment cannot be removed (replicas=0)');
      return r.spec;
    } catch (err) {
      if (err instanceof SettingsError || !(err instanceof DfpError)) throw err;
      const variable = (err.parameter && origin.get(err.parameter)) ?? `${prefix}${(err.parameter ?? 'SERVICE_NAME').replace(/\.([0-9]+)$/, '_$1').replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
      throw new SettingsError(variable, err.message);
    }
  };
  const unindexed = plain.some(([p]) => p === 'servicePath' || p === 'port' || p === 'serviceDomain');
  const withIndexes = destinations.length > 0 ? parse([...plain, ...destinations.flatMap((n) => indexed.get(n) ?? [])]) : undefined;
  const base = unindexed || !withIndexes ? parse(plain) : undefined;
  const spec: ServiceSpec = base && withIndexes ? { ...base, destinations: [...base.destinations, ...withIndexes.destinations] } : ((base ?? withIndexes) as ServiceSpec);
  return { spec, prefix };
}
