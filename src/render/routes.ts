import type { DomainAlgo, Destination, ServiceSpec } from '../spec/types.js';

/**
 * The route table: which (host, path) goes to which backend, as map files HAProxy looks up once
 * per request, so the 10,000th route costs what the 1st does. Routes are keyed by listener + host +
 * path:
 *
 * 1. The Host header is normalised once (port stripped, lower case) and resolved to one virtual
 *    host: exact hosts, then host prefixes (`hdr_beg`, the default), then `*.` wildcards (by
 *    stripping one, two or three leading labels and looking the rest up exactly), then `hdr_dom`.
 *    Each virtual host's id is its domain with a one-character algorithm tag (`=a.com`, `^a.com`,
 *    `*a.com`, `~a.com`), so equal domains under different algorithms never mix.
 * 2. Paths are looked up under `<vhost><path>` first, then under `<path>` alone: host-specific
 *    routes win over host-less ones (a difference from the original, which ordered by aclName).
 *    Exact paths are a `map_str`, prefixes a `map_beg` (longest prefix wins).
 * Routes the maps cannot express (regex and other path types, header / User-Agent / entry-port
 * conditions) are ACL rules; their cost grows with their number, so only they pay it.
 */

export const MAP_FILES = {
  hostsExact: 'hosts-exact.map',
  hostsPrefix: 'hosts-prefix.map',
  hostsWild: 'hosts-wildcard.map',
  hostsDom: 'hosts-domain.map',
  exact: 'routes-exact.map',
  prefix: 'routes-prefix.map',
  excludes: 'routes-exclude.map',
  redirects: 'domain-redirects.map',
  flags: 'backend-flags.map',
  fallback: 'routes-fallback.map',
} as const;
export type MapName = keyof typeof MAP_FILES;
export const MAP_NAMES = Object.keys(MAP_FILES) as MapName[];

/** Keys of the fallback map: the host-less `/` route, and the `isDefaultBackend` service. */
export const FALLBACK = { root: '/', default: '*' } as const;

/** How many leading labels a `*.` wildcard covers: `*.a.com` matches x.a.com, y.x.a.com and z.y.x.a.com. */
export const WILDCARD_DEPTH = 3;

const ALGO_TAG: Record<DomainAlgo | 'wildcard', string> = {
  'hdr(host)': '=',
  'hdr_beg(host)': '^',
  'hdr_end(host)': '*',
  'hdr_dom(host)': '~',
  wildcard: '*',
};

export interface Route {
  readonly backend: string;
  readonly spec: ServiceSpec;
  readonly dest: Destination;
}

export interface RouteConflict {
  /** The route claimed more than once. */
  readonly route: string;
  readonly winner: string;
  readonly loser: string;
}

/** A route the maps cannot hold: rendered as ACL rules, in this order. */
export interface AclRoute extends Route {
  /** Before the maps (header/User-Agent/entry-port conditions narrow a path), or after them (pattern path types). */
  readonly stage: 'conditional' | 'pattern';
}

export interface RouteTable {
  readonly maps: Record<MapName, Map<string, string>>;
  readonly acl: readonly AclRoute[];
  readonly conflicts: readonly RouteConflict[];
}

/** Where a domain goes in the host maps (one or two entries) and the virtual-host id it resolves to. */
export function vhostOf(domain: string, algo: DomainAlgo): { id: string; entries: { map: MapName; key: string }[] } {
  if (domain.startsWith('*.')) {
    const rest = domain.slice(2);
    return { id: `${ALGO_TAG.wildcard}${rest}`, entries: [{ map: 'hostsWild', key: rest }] };
  }
  const id = `${ALGO_TAG[algo]}${domain}`;
  switch (algo) {
    case 'hdr(host)':
      return { id, entries: [{ map: 'hostsExact', key: domain }] };
    case 'hdr_beg(host)':
      return { id, entries: [{ map: 'hostsPrefix', key: domain }] };
    case 'hdr_end(host)':
      // "ends with a.com", on label boundaries: the domain itself and its sub-domains.
      return { id, entries: [{ map: 'hostsExact', key: domain }, { map: 'hostsWild', key: domain }] };
    case 'hdr_dom(host)':
      return { id, entries: [{ map: 'hostsDom', key: domain }] };
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function byAclName(a: ServiceSpec, b: ServiceSpec): number {
  return cmp(a.aclName, b.aclName) || cmp(a.serviceName, b.serviceName);
}

const MAP_PATH_TYPES = new Set(['path', 'path_beg']);

function isSorted(specs: readonly ServiceSpec[]): boolean {
  for (let i = 1; i < specs.length; i++) if (byAclName(specs[i - 1] as ServiceSpec, specs[i] as ServiceSpec) > 0) return false;
  return true;
}

/**
 * Builds the route table from services in aclName order (the first claim of a key wins, like the
 * original's rule order). `backendOf` names the backend of a destination; `flagsOf` its per-route
 * flags (https redirect and friends), which live in a map so they change without a reload.
 */
export function buildRoutes(
  specs: readonly ServiceSpec[],
  backendOf: (spec: ServiceSpec, dest: Destination) => string,
  flagsOf: (spec: ServiceSpec, dest: Destination) => string,
  defaultAlgo: DomainAlgo,
): RouteTable {
  const maps = Object.fromEntries(MAP_NAMES.map((m) => [m, new Map<string, string>()])) as Record<MapName, Map<string, string>>;
  const acl: AclRoute[] = [];
  const conflicts: RouteConflict[] = [];
  const owners = Object.fromEntries(MAP_NAMES.map((m) => [m, new Map<string, Route>()])) as Record<MapName, Map<string, Route>>;

  const claim = (map: MapName, key: string, value: string, route: Route, label: string) => {
    const table = maps[map];
    const had = table.get(key);
    if (had === undefined) {
      table.set(key, value);
      owners[map].set(key, route);
    } else if (had !== value) {
      conflicts.push({ route: label, winner: owners[map].get(key)?.spec.aclName ?? '?', loser: route.spec.aclName });
    }
  };

  // Sorted once here unless the caller already did (the renderer sorts the services it renders).
  const ordered = isSorted(specs) ? specs : [...specs].sort(byAclName);
  for (const spec of ordered) {
    const names = spec.destinations.map((d) => backendOf(spec, d));
    const flags = spec.destinations.map((d) => flagsOf(spec, d));
    const plan = claimsOf(spec, names, flags, spec.serviceDomainAlgo ?? defaultAlgo);
    for (const c of plan.claims) claim(c.map, c.key, c.value, c.route, c.label);
    acl.push(...plan.acl);
  }
  return { maps, acl, conflicts };
}

export interface Claim {
  readonly map: MapName;
  readonly key: string;
  readonly value: string;
  readonly route: Route;
  readonly label: string;
}

/**
 * One service's claims on the maps and its ACL routes, memoised per spec (specs are immutable):
 * a change re-derives only the services it touched, and the table is assembled from the rest.
 */
const claimMemo = new WeakMap<ServiceSpec, { readonly key: string; readonly claims: readonly Claim[]; readonly acl: readonly AclRoute[] }>();

export function claimsOf(spec: ServiceSpec, names: readonly string[], flagsList: readonly string[], algo: DomainAlgo): { claims: readonly Claim[]; acl: readonly AclRoute[] } {
  const memoKey = `${names.join('\0')}\n${flagsList.join('\0')}\n${algo}`;
  const known = claimMemo.get(spec);
  if (known?.key === memoKey) return known;
  const claims: Claim[] = [];
  const acl: AclRoute[] = [];
  const byIndex = spec.destinations.map((dest, i) => ({ dest, backend: names[i] ?? '', flags: flagsList[i] ?? '' })).sort((a, b) => a.dest.index - b.dest.index);
  const add = (map: MapName, key: string, value: string, route: Route, label: string) => claims.push({ map, key, value, route, label });
  const firstDest = byIndex.find((d) => d.dest.reqMode === 'http');
  if (spec.isDefaultBackend && firstDest) {
    add('fallback', FALLBACK.default, firstDest.backend, { backend: firstDest.backend, spec, dest: firstDest.dest }, 'default backend');
  }
  for (const { dest, backend, flags } of byIndex) {
    // A reqMode=tcp or sni destination has a frontend of its own (render/haproxy-config.ts), no HTTP route.
    if (dest.reqMode !== 'http') continue;
    const route: Route = { backend, spec, dest };
    if (flags !== '') add('flags', backend, flags, route, `flags of ${backend}`);
    // Redirects are keyed by host alone: they apply whatever kind of route the destination is.
    const first = dest.serviceDomain[0];
    for (const from of dest.redirectFromDomain) if (first !== undefined) add('redirects', from, first, route, `redirect from ${from}`);
    const conditional = dest.serviceHeader.length > 0 || dest.userAgent.length > 0 || dest.srcPort !== undefined;
    if (conditional || !MAP_PATH_TYPES.has(dest.pathType)) {
      acl.push({ ...route, stage: conditional ? 'conditional' : 'pattern' });
      continue;
    }
    const vhosts = dest.serviceDomain.map((d) => vhostOf(d, algo));
    for (const v of vhosts) for (const e of v.entries) add(e.map, e.key, v.id, route, `host ${e.key}`);
    const scopes = vhosts.length > 0 ? vhosts.map((v) => v.id) : [''];
    const table: MapName = dest.pathType === 'path' ? 'exact' : 'prefix';
    for (const scope of scopes) {
      for (const p of dest.servicePath) {
        if (scope === '' && table === 'prefix' && p === '/') {
          // The host-less catch-all: after every other route, from a map like the rest.
          add('fallback', FALLBACK.root, backend, route, '/');
          continue;
        }
        add(table, `${scope}${p}`, backend, route, `${scope}${p}`);
      }
    }
    // Exclusions: `<backend><path>` prefixes, checked once a backend is chosen.
    for (const x of dest.servicePathExclude) add('excludes', `${backend}${x}`, '1', route, `exclude ${x}`);
  }
  const plan = { key: memoKey, claims, acl };
  claimMemo.set(spec, plan);
  return plan;
}

export function mapText(table: ReadonlyMap<string, string>): string {
  return [...table]
    .sort((a, b) => cmp(a[0], b[0]))
    .map(([key, value]) => `${key} ${value}\n`)
    .join('');
}
