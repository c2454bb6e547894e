import { createHash } from 'node:crypto';
import type { ConnectionMode, Timeouts } from '../config/settings.js';
import type { Instance } from '../discovery/types.js';
import { backendName, type Destination, type ServiceSpec } from '../spec/types.js';

/**
 * The renderer: a pure function from settings + desired state + instances to HAProxy's files.
 * No I/O, no clock, no randomness: the same input gives byte-identical output, which is what
 * makes "skip the apply when nothing changed" and golden-file tests possible.
 *
 * Routing design (why maps): `path_beg` and exact `path` routes live in two map files looked up
 * once per request (`map_beg` is a prefix tree, so the longest prefix wins and the cost does not
 * grow with the number of services). Other path types (regex, suffix, ...) cannot be indexed and
 * are rendered as an ACL chain after the maps. A `/` prefix is the catch-all and goes last.
 */

export interface RenderSettings {
  readonly bindPorts: readonly number[];
  readonly timeouts: Readonly<Timeouts>;
  readonly connectionMode: ConnectionMode;
  readonly maxconn: number;
  readonly debug: boolean;
  /** Admin socket path (runtime API). */
  readonly adminSocket: string;
  /** Directory the config refers to for its map files. */
  readonly mapDir: string;
}

export interface ServiceState {
  readonly spec: ServiceSpec;
  /** Instances of the spec's Consul service; empty means the backend answers 503. */
  readonly instances: readonly Instance[];
}

export const MAP_FILES = { exact: 'routes-exact.map', prefix: 'routes-prefix.map' } as const;
export type MapName = keyof typeof MAP_FILES;

export interface RouteConflict {
  /** The path (or `pathType path`) claimed more than once. */
  readonly route: string;
  readonly winner: string;
  readonly loser: string;
}

/**
 * Which HAProxy backend serves which backend key (the canonical `<aclName>-be<port>_<index>`).
 * HAProxy 2.6 cannot add a backend at run time, so the config keeps empty spare backends; a
 * service added without a reload takes one, and its backend keeps the spare's name until the next
 * reload renames everything canonically.
 */
export interface BackendAllocation {
  /** HAProxy backend name per backend key; a missing key uses the canonical name. */
  readonly names: ReadonlyMap<string, string>;
  /** Empty backends ready for services added at run time. */
  readonly spares: readonly string[];
  /** Emptied backends of services removed at run time; gone at the next reload. */
  readonly retired: readonly string[];
}

export const CANONICAL: BackendAllocation = { names: new Map(), spares: [], retired: [] };

export interface RenderedServer {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly check: boolean;
}

export interface RenderedConfig {
  readonly config: string;
  readonly maps: Readonly<Record<MapName, string>>;
  /** Routes claimed by several services: the first by aclName wins, like the original's ordering. */
  readonly conflicts: readonly RouteConflict[];
  /** The servers of every backend, by HAProxy backend name (spares and retired ones empty). */
  readonly backends: ReadonlyMap<string, readonly RenderedServer[]>;
  /** The config without its server lines: equal skeletons differ only in what the runtime API can change. */
  readonly skeleton: string;
}

const ROUTE_VAR = 'txn.dfp_backend';

/** Stable server name from the registry ID: readable, unique, safe for HAProxy. */
export function serverName(instance: Pick<Instance, 'id'>): string {
  let name = serverNames.get(instance.id);
  if (name === undefined) {
    const readable = instance.id.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 40);
    name = `${readable}_${createHash('sha256').update(instance.id).digest('hex').slice(0, 8)}`;
    if (serverNames.size > 100_000) serverNames.clear();
    serverNames.set(instance.id, name);
  }
  return name;
}

/** Memo of serverName (a pure function of the ID): rendering 10,000 services hashes no ID twice. */
const serverNames = new Map<string, string>();

export function serverAddress(instance: Pick<Instance, 'address' | 'port'>): string {
  return instance.address.includes(':') ? `ipv6@${instance.address}:${instance.port}` : `${instance.address}:${instance.port}`;
}

interface Route {
  readonly backend: string;
  readonly aclName: string;
  readonly dest: Destination;
}

function byAclName(a: ServiceState, b: ServiceState): number {
  return cmp(a.spec.aclName, b.spec.aclName) || cmp(a.spec.serviceName, b.spec.serviceName);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function renderConfig(settings: RenderSettings, services: readonly ServiceState[], allocation: BackendAllocation = CANONICAL): RenderedConfig {
  const ordered = [...services].sort(byAclName);
  const nameOf = (spec: ServiceSpec, dest: Destination) => {
    const key = backendName(spec, dest);
    return allocation.names.get(key) ?? key;
  };
  const exact = new Map<string, Route>();
  const prefix = new Map<string, Route>();
  const patterns: Route[] = [];
  let root: Route | undefined;
  const conflicts: RouteConflict[] = [];

  const claim = (table: Map<string, Route>, key: string, route: Route, label: string) => {
    const owner = table.get(key);
    if (owner === undefined) table.set(key, route);
    else if (owner.backend !== route.backend) conflicts.push({ route: label, winner: owner.aclName, loser: route.aclName });
  };

  for (const { spec } of ordered) {
    for (const dest of [...spec.destinations].sort((a, b) => a.index - b.index)) {
      const route: Route = { backend: nameOf(spec, dest), aclName: spec.aclName, dest };
      if (dest.pathType === 'path') {
        for (const p of dest.servicePath) claim(exact, p, route, `path ${p}`);
      } else if (dest.pathType === 'path_beg') {
        for (const p of dest.servicePath) {
          if (p !== '/') claim(prefix, p, route, p);
          else if (root === undefined) root = route;
          else if (root.backend !== route.backend) conflicts.push({ route: '/', winner: root.aclName, loser: route.aclName });
        }
      } else {
        patterns.push(route);
      }
    }
  }

  const t = settings.timeouts;
  const lines: string[] = [
    '# Generated by Docker Flow Proxy. Do not edit: every apply rewrites this file.',
    'global',
    '    master-worker',
    `    stats socket ${settings.adminSocket} mode 600 level admin expose-fd listeners`,
    '    stats timeout 30s',
    `    maxconn ${settings.maxconn}`,
    // Bounds how long an old worker drains after a reload (and so the memory of stacked workers).
    '    hard-stop-after 30s',
    `    log stdout format raw local0 ${settings.debug ? 'info' : 'notice'}`,
    '',
    'defaults',
    '    mode http',
    '    log global',
    settings.debug ? '    option httplog' : '    option dontlognull',
    '    balance roundrobin',
    '    retries 3',
    '    option redispatch',
    `    option ${settings.connectionMode}`,
    // Without it a reload drops the request a keep-alive client sends on an idle connection.
    '    option idle-close-on-response',
    `    timeout connect ${t.connect}s`,
    `    timeout client ${t.client}s`,
    `    timeout server ${t.server}s`,
    `    timeout queue ${t.queue}s`,
    `    timeout tunnel ${t.tunnel}s`,
    `    timeout http-request ${t.httpRequest}s`,
    `    timeout http-keep-alive ${t.httpKeepAlive}s`,
    '',
    'frontend services',
    ...settings.bindPorts.map((p) => `    bind *:${p}`),
    '    mode http',
    '    option forwardfor',
    `    http-request set-var(${ROUTE_VAR}) path,map_str(${settings.mapDir}/${MAP_FILES.exact})`,
    `    http-request set-var(${ROUTE_VAR}) path,map_beg(${settings.mapDir}/${MAP_FILES.prefix}) unless { var(${ROUTE_VAR}) -m found }`,
    `    use_backend %[var(${ROUTE_VAR})] if { var(${ROUTE_VAR}) -m found }`,
  ];
  for (const route of patterns) {
    const acl = `url_${route.aclName}${route.dest.port ?? ''}_${route.dest.index}`;
    // `--` ends HAProxy's ACL flags: no pattern can be taken for one.
    lines.push(`    acl ${acl} ${route.dest.pathType} -- ${route.dest.servicePath.join(' ')}`);
    lines.push(`    use_backend ${route.backend} if ${acl}`);
  }
  if (root !== undefined) lines.push(`    use_backend ${root.backend} if { path_beg / }`);

  const backends = new Map<string, RenderedServer[]>();
  for (const { spec, instances } of ordered) {
    const servers = [...instances]
      .sort((a, b) => cmp(a.id, b.id))
      .map((inst) => ({ name: serverName(inst), address: inst.address, port: inst.port, check: !spec.skipCheck }));
    for (const dest of [...spec.destinations].sort((a, b) => a.index - b.index)) backends.set(nameOf(spec, dest), servers);
  }
  for (const name of [...allocation.spares, ...allocation.retired]) backends.set(name, []);
  const skeleton = [...lines];
  for (const [name, servers] of [...backends].sort((a, b) => cmp(a[0], b[0]))) {
    lines.push('', `backend ${name}`, '    mode http');
    skeleton.push('', `backend ${name}`, '    mode http');
    for (const srv of servers) lines.push(`    server ${srv.name} ${serverAddress(srv)}${srv.check ? ' check' : ''}`);
  }
  lines.push('');
  skeleton.push('');

  const mapText = (table: Map<string, Route>) =>
    [...table]
      .sort((a, b) => cmp(a[0], b[0]))
      .map(([key, r]) => `${key} ${r.backend}\n`)
      .join('');
  return { config: lines.join('\n'), maps: { exact: mapText(exact), prefix: mapText(prefix) }, conflicts, backends, skeleton: skeleton.join('\n') };
}
