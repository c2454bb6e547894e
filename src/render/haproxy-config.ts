import type { Drain, RequestLog, StatsSettings, Timeouts } from '../config/settings.js';
import { backendName, type ConnectionMode, type Destination, dnsTarget, type DomainAlgo, REDIRECT_CODES, routedSpec, type ServiceSpec } from '../spec/types.js';
import type { ServiceState } from '../state/service-state.js';
import type { Instance } from '../discovery/types.js';
import { type Backend, buildBackend, DNS_RESOLVERS, quote, renderBackend, type Slot, spareBackend } from './backend.js';
import { assignSlots, type SlotTable, slotName } from './slots.js';
import { CowMap } from '../util/cow-map.js';
import { type AclRoute, buildRoutes, byAclName, claimsOf, FALLBACK, MAP_FILES, MAP_NAMES, type MapName, mapText, type RouteConflict, type RouteTable, WILDCARD_DEPTH } from './routes.js';

export { MAP_FILES, MAP_NAMES, type MapName, type RouteConflict } from './routes.js';
export { type Slot, serverAddress } from './backend.js';

/**
 * The renderer: a pure function from settings + desired state + instances to HAProxy's files.
 * No I/O, no clock, no randomness: the same input gives byte-identical output, which is what
 * makes "skip the apply when nothing changed" and golden-file tests possible.
 *
 * Files: `haproxy.cfg`, the map files of the route table (render/routes.ts), and `credentials.cfg`,
 * which holds the basic-auth users and the stats page's credentials. HAProxy loads both config
 * files; only `haproxy.cfg` is ever shown (config endpoint, dry-run diffs), so no password leaves
 * the machine through the API.
 */

/** One HAProxy listener: a port, plain or TLS-terminating, with the operator's extra bind words. */
export interface Listener {
  readonly port: number;
  readonly ssl: boolean;
  /** Extra bind keywords from DEFAULT_PORTS (`80 accept-proxy`). Operator input, checked by `haproxy -c`. */
  readonly options: string;
}

export interface RenderSettings {
  readonly listeners: readonly Listener[];
  readonly timeouts: Readonly<Timeouts>;
  readonly connectionMode: ConnectionMode;
  readonly maxconn: number;
  readonly drain: Readonly<Drain>;
  /** RESOLVERS: name servers of DNS targets; empty: /etc/resolv.conf. */
  readonly resolvers: readonly { readonly name: string; readonly address: string }[];
  readonly debug: boolean;
  readonly requestLog: Readonly<RequestLog>;
  /** Admin socket path (runtime API). */
  readonly adminSocket: string;
  /** Directory the config refers to for its map files. */
  readonly mapDir: string;
  readonly serviceDomainAlgo: DomainAlgo;
  /** HTTPS_ONLY: every destination redirects plain HTTP. */
  readonly httpsOnly: boolean;
  /** USERS: `name:password` items protecting every service without users of its own. */
  readonly users: readonly string[];
  readonly usersPassEncrypted: boolean;
  /** Users files (`dfp_users_<name>` in SECRETS_DIR) by name, for usersSecret. */
  readonly userSecrets: ReadonlyMap<string, readonly string[]>;
  /** The crt-list TLS listeners load; TLS listeners are bound only when it is set (some certificate exists). */
  readonly crtList: string | undefined;
  readonly enableH2: boolean;
  /** CA_FILE: client certificates are requested and verified against it (verifyClientSsl). */
  readonly caFile: string | undefined;
  readonly extraGlobal: readonly string[];
  readonly extraFrontend: readonly string[];
  /** SSL_BIND_OPTIONS / SSL_BIND_CIPHERS; undefined leaves HAProxy's (OpenSSL's) defaults. */
  readonly ssl?: { readonly options: string | undefined; readonly ciphers: string | undefined };
  readonly compression: { readonly algo: readonly string[]; readonly type: readonly string[] };
  /**
   * STATS_*: HAProxy's stats page, or undefined (disabled). Its section lives in `credentials.cfg`
   * (it carries `stats auth`); `frontend services` only routes its URI there, by name.
   */
  readonly stats?: StatsSettings | undefined;
  /** SERVER_SLOTS: the fewest server slots a backend has (render/slots.ts). */
  readonly serverSlots: number;
  /** PROMETHEUS_PORT: HAProxy's own Prometheus exporter on a frontend of its own; undefined = off. */
  readonly prometheusPort?: number | undefined;
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
  /** Server slots per HAProxy backend name (render/slots.ts); a backend without one gets a fresh table. */
  readonly slots: ReadonlyMap<string, SlotTable>;
  /**
   * Frontend lookups kept from the live config (RenderedConfig.lookups) while changes go out at run
   * time: removing the last route of a kind then needs no reload; the next reload drops the lookup.
   */
  readonly lookups?: readonly string[];
  /**
   * Whether the server slots of spare (and retired) backends carry `check` (undefined: they do).
   * A service goes live on a spare without a reload only when its backend reads exactly like the
   * spare, so a fleet of `skipCheck` services needs spares without checks: each reload picks what
   * most services use (canonicalAllocation), and runtime changes keep it.
   */
  readonly spareChecks?: boolean;
}

export const CANONICAL: BackendAllocation = { names: new Map(), spares: [], retired: [], slots: new Map() };

export interface RenderedConfig {
  readonly config: string;
  /** The frontend lookups rendered (see inUse): the kinds of routes this config can serve. */
  readonly lookups: readonly string[];
  readonly maps: Readonly<Record<MapName, string>>;
  /** `credentials.cfg`: basic-auth userlists and the stats page's section. Never shown. */
  readonly secrets: string;
  /** Routes claimed by several services: the first by aclName wins, like the original's ordering. */
  readonly conflicts: readonly RouteConflict[];
  /** Every backend by HAProxy name (the slots of spares and retired ones all free). */
  readonly backends: ReadonlyMap<string, Backend>;
  /** The config without its server lines: equal skeletons differ only in what the runtime API can change. */
  readonly skeleton: string;
  /** The skeleton's head (everything before the backends) and backend sections, in order: what `skeleton` joins. */
  readonly skeletonParts: readonly string[];
  /** The route table's entries, by map (what `maps` holds as text). */
  readonly tables: Readonly<Record<MapName, ReadonlyMap<string, string>>>;
  /** Backend section names in config order, and their texts: what patchConfig splices. */
  readonly sectionNames: readonly string[];
  readonly sectionTexts: readonly string[];
}

const V = {
  host: 'txn.dfp_host',
  path: 'txn.dfp_path',
  vhost: 'txn.dfp_vhost',
  key: 'txn.dfp_key',
  backend: 'txn.dfp_backend',
  exclude: 'txn.dfp_xkey',
  flags: 'txn.dfp_flags',
  redirect: 'txn.dfp_redirect',
} as const;
const NOT_ROUTED = `!{ var(${V.backend}) -m found }`;

export const GLOBAL_USERLIST = 'dfp-default-users';
/** The stats page's section (a backend, or a listen section with STATS_PORT), in `credentials.cfg`. */
export const STATS_SECTION = 'dfp-stats';
export const HTTPS_REDIRECT_DEFAULT = 302;

/** Per-route flags kept in a map, so they change without a reload: `,https302,denyhttp,`. */
export function routeFlags(settings: Pick<RenderSettings, 'httpsOnly' | 'caFile'>, spec: ServiceSpec, dest: Destination): string {
  const flags: string[] = [];
  if (dest.httpsOnly || settings.httpsOnly) flags.push(`https${dest.httpsRedirectCode ?? HTTPS_REDIRECT_DEFAULT}`);
  if (dest.denyHttp) flags.push('denyhttp');
  if (spec.redirectWhenHttpProto) flags.push('xfphttp');
  if (spec.redirectUnlessHttpsProto) flags.push('xfpnothttps');
  if (dest.verifyClientSsl) flags.push('verifyclient');
  return flags.length === 0 ? '' : `,${flags.join(',')},`;
}

function userlistName(spec: ServiceSpec): string {
  return `dfp-users-${spec.aclName}`;
}

/** A service's users with their passwords resolved (usersSecret file, then USERS), or undefined for none. */
function effectiveUsers(settings: RenderSettings, spec: ServiceSpec): string[] | undefined {
  const fromSecret = spec.usersSecret ? (settings.userSecrets.get(spec.usersSecret) ?? []) : [];
  const wanted = spec.users.length > 0 ? spec.users : fromSecret;
  if (wanted.length === 0) return spec.usersSecret ? [] : undefined;
  const passwordOf = (name: string, from: readonly string[]) => from.find((u) => u.startsWith(`${name}:`));
  return wanted.flatMap((u) => (u.includes(':') ? [u] : [passwordOf(u, fromSecret) ?? passwordOf(u, settings.users)].filter((x): x is string => x !== undefined)));
}

function userlistLines(name: string, users: readonly string[], encrypted: boolean): string[] {
  return [
    '',
    `userlist ${name}`,
    ...users.map((u) => {
      const i = u.indexOf(':');
      return `    user ${u.slice(0, i)} ${encrypted ? 'password' : 'insecure-password'} ${quote(u.slice(i + 1))}`;
    }),
  ];
}

/** The HAProxy backend name of a destination under this allocation (a spare's, or the canonical one). */
function backendNamer(allocation: BackendAllocation): (spec: ServiceSpec, dest: Destination) => string {
  return (spec, dest) => {
    const key = backendName(spec, dest);
    return allocation.names.get(key) ?? key;
  };
}

export function renderConfig(settings: RenderSettings, services: readonly ServiceState[], allocation: BackendAllocation = CANONICAL): RenderedConfig {
  // A destination with httpsPort is routed as two (spec/types.ts routedSpec).
  const ordered = services.map((s) => (routedSpec(s.spec) === s.spec ? s : { ...s, spec: routedSpec(s.spec) })).sort((a, b) => byAclName(a.spec, b.spec));
  const nameOf = backendNamer(allocation);
  const routes = buildRoutes(
    ordered.map((s) => s.spec),
    nameOf,
    (spec, dest) => routeFlags(settings, spec, dest),
    settings.serviceDomainAlgo,
  );
  const lookups = inUse(routes.maps);
  const sniShared = sniSharedPorts(settings, ordered);
  for (const kept of allocation.lookups ?? []) lookups.add(kept);

  // --- userlists (the secret file) ---
  const secrets: string[] = ['# Generated by Docker Flow Proxy: credentials (basic-auth users, stats page). Never shown by the API.'];
  if (settings.users.length > 0) secrets.push(...userlistLines(GLOBAL_USERLIST, settings.users, settings.usersPassEncrypted));
  const withUsers = new Set<string>();
  for (const { spec } of ordered) {
    const users = effectiveUsers(settings, spec);
    if (users === undefined) continue;
    withUsers.add(spec.serviceName);
    secrets.push(...userlistLines(userlistName(spec), users, spec.usersPassEncrypted));
  }
  if (settings.stats) secrets.push(...statsLines(settings.stats));
  secrets.push('');
  // What userlistFor says (patchConfig asks it), from the users just resolved.
  const userlistOf = (spec: ServiceSpec) => (withUsers.has(spec.serviceName) ? userlistName(spec) : globalUserlist(settings));

  // --- global and defaults ---
  const t = settings.timeouts;
  const lines: string[] = [
    '# Generated by Docker Flow Proxy. Do not edit: every apply rewrites this file.',
    'global',
    '    master-worker',
    `    stats socket ${settings.adminSocket} mode 600 level admin expose-fd listeners`,
    '    stats timeout 30s',
    `    maxconn ${settings.maxconn}`,
    // An old worker keeps the connections it holds after a reload (a WebSocket, a TCP tunnel) until
    // they close, for up to hard-stop-after; mworker-max-reloads bounds how many old workers (and
    // copies of the config in memory) pile up meanwhile.
    `    hard-stop-after ${settings.drain.hardStopAfter}s`,
    `    mworker-max-reloads ${settings.drain.maxReloads}`,
    `    log stdout format raw local0 ${settings.debug ? 'info' : 'notice'}`,
    ...(settings.ssl?.options ? [`    ssl-default-bind-options ${settings.ssl.options}`] : []),
    ...(settings.ssl?.options && serverSslOptions(settings.ssl.options) ? [`    ssl-default-server-options ${serverSslOptions(settings.ssl.options)}`] : []),
    ...(settings.ssl?.ciphers ? [`    ssl-default-bind-ciphers ${settings.ssl.ciphers}`] : []),
    ...settings.extraGlobal.map((l) => `    ${l}`),
    '',
    'defaults',
    '    mode http',
    '    log global',
    ...(settings.debug
      ? ['    option httplog', ...(settings.requestLog.errorsOnly ? ['    option dontlog-normal'] : [])]
      : // Session lines are logged at `info`, below the `notice` of the log target, so they are dropped;
        // HAProxy builds them all the same (measured: ~1.7 of ~42 µs of CPU per HTTPS request).
        ['    option dontlognull', '    option dontlog-normal']),
    '    balance roundrobin',
    '    retries 3',
    '    option redispatch',
    `    option ${settings.connectionMode}`,
    `    timeout connect ${t.connect}s`,
    `    timeout client ${t.client}s`,
    `    timeout server ${t.server}s`,
    `    timeout queue ${t.queue}s`,
    `    timeout tunnel ${t.tunnel}s`,
    `    timeout http-request ${t.httpRequest}s`,
    `    timeout http-keep-alive ${t.httpKeepAlive}s`,
    ...(settings.compression.algo.length > 0 ? [`    compression algo ${settings.compression.algo.join(' ')}`] : []),
    ...(settings.compression.type.length > 0 ? [`    compression type ${settings.compression.type.join(' ')}`] : []),
    '',
    ...renderFrontend(settings, routes, lookups, sniShared),
    ...renderTcpFrontends(ordered, nameOf, settings, sniShared),
    ...renderPrometheus(settings),
    ...renderResolvers(settings, ordered),
  ];

  // --- backends ---
  const backends = new Map<string, Backend>();
  const texts = new Map<string, Section>();
  for (const { spec, instances } of ordered) {
    for (const [name, section] of serviceSections(settings, spec, instances, nameOf, allocation, userlistOf(spec))) {
      texts.set(name, section);
      backends.set(name, section.backend);
    }
  }
  for (const name of [...allocation.spares, ...allocation.retired]) {
    const b = spareBackend(name, allocation.slots.get(name)?.length ?? settings.serverSlots, allocation.spareChecks ?? true);
    texts.set(name, spareSection(b));
    backends.set(name, b);
  }
  const head = lines.join('\n');
  const sorted = [...texts].sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const sectionTexts = sorted.map(([, t]) => t.text);
  const skeletonParts = [head, ...sorted.map(([, t]) => t.skeleton)];
  const maps = Object.fromEntries(MAP_NAMES.map((m) => [m, mapText(routes.maps[m])])) as Record<MapName, string>;
  return assemble(head, sectionTexts, skeletonParts, {
    lookups: [...lookups].sort(),
    maps,
    secrets: secrets.join('\n'),
    conflicts: routes.conflicts,
    backends,
    tables: routes.maps,
    sectionNames: sorted.map(([name]) => name),
  });
}

/**
 * The config text and the skeleton around the other parts of a render. The skeleton is joined
 * when asked (only to say why a reload is needed), not kept: the sections' skeletons are memoised
 * per spec, and a kept join is a second copy (2.5 MB per rendered config at 10,000 services,
 * measured in a heap snapshot). The config is joined once: it is hashed, compared and written on
 * every apply, and joining it each time cost ~30 ms per change there.
 */
function assemble(
  head: string,
  sectionTexts: readonly string[],
  skeletonParts: readonly string[],
  rest: Omit<RenderedConfig, 'config' | 'skeleton' | 'skeletonParts' | 'sectionTexts'>,
): RenderedConfig {
  return {
    config: sectionTexts.length === 0 ? `${head}\n` : `${head}\n${sectionTexts.join('\n')}\n`,
    get skeleton() {
      return `${skeletonParts.join('\n')}\n`;
    },
    skeletonParts,
    sectionTexts,
    ...rest,
  };
}

/** A service's backend sections by HAProxy name (its spec routed: routedSpec). */
function serviceSections(
  settings: RenderSettings,
  spec: ServiceSpec,
  instances: readonly Instance[],
  nameOf: (spec: ServiceSpec, dest: Destination) => string,
  allocation: BackendAllocation,
  userlist: string | undefined,
): [string, Section][] {
  const ids = instanceIds(instances);
  return spec.destinations.map((dest) => {
    const name = nameOf(spec, dest);
    // A DNS target's servers come from HAProxy's resolver, not from Consul.
    const dns = dnsTarget(spec, dest) !== undefined;
    const given = allocation.slots.get(name);
    const table = given ?? assignSlots(undefined, dns ? [] : ids, settings.serverSlots, true) ?? [];
    return [name, backendSection(spec, dest, name, userlist, table, dns ? NO_INSTANCES : instances, dns ? [] : ids, settings.serverSlots)];
  });
}

/** The userlist a service's backends check: its own, the global one (USERS), or none. */
function userlistFor(settings: RenderSettings, spec: ServiceSpec): string | undefined {
  return effectiveUsers(settings, spec) !== undefined ? userlistName(spec) : globalUserlist(settings);
}

function globalUserlist(settings: RenderSettings): string | undefined {
  return settings.users.length > 0 ? GLOBAL_USERLIST : undefined;
}

const sectionIndexes = new WeakMap<readonly string[], ReadonlyMap<string, number>>();

/**
 * renderConfig's files for `services` and `allocation`, made from `live` by rendering only the
 * backends of the `touched` services, when the change from what rendered `live` is what a delta
 * plan makes (plan.ts deltaOps): instance lists moved and services were added onto spare
 * backends, nothing else. Then the set of backends, the frontend, the userlists and the route
 * conflicts are those of `live`, and the route tables are `tables` (the live ones plus the added
 * entries). Work in proportion to the change, but for joining and hashing the text; unit tests
 * hold the result equal to renderConfig's. Undefined when a touched backend is not in `live`:
 * the caller renders everything.
 */
export function patchConfig(
  settings: RenderSettings,
  live: RenderedConfig,
  services: ReadonlyMap<string, ServiceState>,
  touched: Iterable<string>,
  allocation: BackendAllocation,
  tables: Readonly<Record<MapName, ReadonlyMap<string, string>>>,
): RenderedConfig | undefined {
  let index = sectionIndexes.get(live.sectionNames);
  if (index === undefined) {
    index = new Map(live.sectionNames.map((name, i) => [name, i]));
    sectionIndexes.set(live.sectionNames, index);
  }
  const nameOf = backendNamer(allocation);
  const sectionTexts = [...live.sectionTexts];
  const skeletonParts = [...live.skeletonParts];
  const backends = CowMap.edit(live.backends);
  for (const serviceName of touched) {
    const state = services.get(serviceName);
    if (state === undefined) return undefined;
    const spec = routedSpec(state.spec);
    for (const [name, section] of serviceSections(settings, spec, state.instances, nameOf, allocation, userlistFor(settings, spec))) {
      const i = index.get(name);
      if (i === undefined) return undefined;
      sectionTexts[i] = section.text;
      skeletonParts[i + 1] = section.skeleton;
      backends.set(name, section.backend);
    }
  }
  const maps = Object.fromEntries(MAP_NAMES.map((m) => [m, tables[m] === live.tables[m] ? live.maps[m] : mapText(tables[m])])) as Record<MapName, string>;
  return assemble(skeletonParts[0] as string, sectionTexts, skeletonParts, {
    lookups: live.lookups,
    maps,
    secrets: live.secrets,
    conflicts: live.conflicts,
    backends,
    tables,
    sectionNames: live.sectionNames,
  });
}

interface Section {
  readonly backend: Backend;
  readonly text: string;
  readonly skeleton: string;
}

/**
 * One backend's section, memoised per spec and destination (both immutable): a change renders the
 * backends it touched, and the config is spliced from the rest. The entry is reused only while the
 * name, userlist, slot table and instance list are the very same values. Keyed by destination
 * index; the https backend of a destination (routedSpec) by -1 - index.
 */
const sectionMemo = new WeakMap<ServiceSpec, Map<number, Section & { readonly key: readonly unknown[] }>>();

function backendSection(
  spec: ServiceSpec,
  dest: Destination,
  name: string,
  userlist: string | undefined,
  given: SlotTable,
  instances: readonly Instance[],
  ids: readonly string[],
  minSlots: number,
): Section {
  let perSpec = sectionMemo.get(spec);
  if (perSpec === undefined) {
    perSpec = new Map();
    sectionMemo.set(spec, perSpec);
  }
  const key = [name, userlist, given, instances];
  const slot = dest.https ? -1 - dest.index : dest.index;
  const known = perSpec.get(slot);
  if (known?.key.every((k, i) => k === key[i])) return known;
  // The allocation's table, unless it does not hold exactly these instances (a caller that
  // allocated for other instances): then a fresh one, so the output always matches the input.
  const table = assignSlots(given, ids, minSlots, false) ?? assignSlots(given, ids, minSlots, true) ?? [];
  const byId = new Map(instances.map((i) => [i.id, i]));
  const slots: Slot[] = table.map((id, i) => ({ name: slotName(i), instance: id === undefined ? undefined : byId.get(id) }));
  const backend = buildBackend(spec, dest, slots, userlist, name);
  const section = { key, backend, text: renderBackend(backend, true).join('\n'), skeleton: renderBackend(backend, false).join('\n') };
  perSpec.set(slot, section);
  return section;
}

const spareSections = new WeakMap<Backend, Section>();

function spareSection(b: Backend): Section {
  let section = spareSections.get(b);
  if (section === undefined) {
    section = { backend: b, text: renderBackend(b, true).join('\n'), skeleton: renderBackend(b, false).join('\n') };
    spareSections.set(b, section);
  }
  return section;
}

const NO_INSTANCES: readonly Instance[] = [];

const idMemo = new WeakMap<readonly Instance[], readonly string[]>();

/** Distinct instance IDs, memoised per (immutable) instance list. */
export function instanceIds(instances: readonly Instance[]): readonly string[] {
  let ids = idMemo.get(instances);
  if (ids === undefined) {
    ids = [...new Set(instances.map((i) => i.id))];
    idMemo.set(instances, ids);
  }
  return ids;
}

/**
 * The stats page. In `credentials.cfg`, because `stats auth` carries the password in clear; HAProxy
 * reads that file after `haproxy.cfg`, so the section inherits the same `defaults`.
 */
function statsLines(stats: StatsSettings): string[] {
  return [
    '',
    stats.port === undefined ? `backend ${STATS_SECTION}` : `listen ${STATS_SECTION}`,
    ...(stats.port === undefined ? [] : [`    bind *:${stats.port}`]),
    '    mode http',
    '    stats enable',
    `    stats uri ${stats.uri}`,
    '    stats refresh 30s',
    ...(stats.auth ? [`    stats realm ${quote('Strictly Private')}`, `    stats auth ${quote(`${stats.auth.user}:${stats.auth.pass}`)}`] : []),
  ];
}

function bindLine(settings: RenderSettings, l: Listener, sniShared: ReadonlySet<number>): string {
  const tls = l.ssl
    ? ` ssl crt-list ${settings.crtList} alpn ${settings.enableH2 ? 'h2,http/1.1' : 'http/1.1'}${settings.caFile ? ` ca-file ${settings.caFile} verify optional` : ''}`
    : '';
  // The port is the SNI frontend's (renderTcpFrontends): TLS it does not pass through arrives here,
  // over a socket of HAProxy's own, with the client's addresses in a PROXY header.
  if (l.ssl && sniShared.has(l.port)) {
    const tlsOptions = splitBindOptions(l.options).tls;
    return `    bind ${tlsTermSocket(l.port)} accept-proxy${tls}${tlsOptions ? ` ${tlsOptions}` : ''}`;
  }
  return `    bind *:${l.port}${tls}${l.options ? ` ${l.options}` : ''}`;
}

/**
 * HAProxy's Prometheus exporter (built in since 2.4, `USE_PROMEX`), on a port of its own so no
 * service route can shadow it. Not logged: a scrape every few seconds is no request worth a line.
 */
export const PROMETHEUS_SECTION = 'dfp-prometheus';
function renderPrometheus(settings: RenderSettings): string[] {
  if (settings.prometheusPort === undefined) return [];
  return [
    '',
    `frontend ${PROMETHEUS_SECTION}`,
    `    bind *:${settings.prometheusPort}`,
    '    mode http',
    '    no log',
    '    http-request use-service prometheus-exporter if { path /metrics }',
  ];
}

/** The name servers of DNS targets (outboundHostname), only while one exists. */
function renderResolvers(settings: RenderSettings, services: readonly ServiceState[]): string[] {
  if (!services.some(({ spec }) => spec.destinations.some((d) => dnsTarget(spec, d) !== undefined))) return [];
  return [
    '',
    `resolvers ${DNS_RESOLVERS}`,
    ...(settings.resolvers.length === 0 ? ['    parse-resolv-conf'] : settings.resolvers.map((r) => `    nameserver ${r.name} ${r.address}`)),
    '    hold valid 10s',
    '    accepted_payload_size 8192',
  ];
}

/** Bind keywords about the connection itself; with SNI sharing they stay on the public bind, the rest (TLS) moves to the terminating one. */
const CONNECTION_KEYWORDS = new Set(['accept-proxy', 'tfo', 'defer-accept', 'v4v6', 'v6only', 'transparent', 'interface', 'backlog', 'maxconn', 'namespace']);
const WITH_VALUE = new Set(['interface', 'backlog', 'maxconn', 'namespace']);

function splitBindOptions(options: string): { connection: string; tls: string } {
  const words = options.split(/\s+/).filter((w) => w !== '');
  const connection: string[] = [];
  const tls: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i] as string;
    const target = CONNECTION_KEYWORDS.has(w) ? connection : tls;
    target.push(w);
    if (WITH_VALUE.has(w) && i + 1 < words.length) target.push(words[++i] as string);
  }
  return { connection: connection.join(' '), tls: tls.join(' ') };
}

/** The abstract socket where a TLS port shared with SNI passthrough hands over what it terminates. */
function tlsTermSocket(port: number): string {
  return `abns@dfp-tls-${port}`;
}

/** TLS listener ports that reqMode=sni services share (their binds move to renderTcpFrontends). */
function sniSharedPorts(settings: RenderSettings, services: readonly ServiceState[]): Set<number> {
  const tls = new Set(settings.listeners.filter((l) => l.ssl).map((l) => l.port));
  const out = new Set<number>();
  for (const { spec } of services) for (const d of spec.destinations) if (d.reqMode === 'sni' && d.srcPort !== undefined && tls.has(d.srcPort)) out.add(d.srcPort);
  return out;
}

/** ACL names derive from the backend name, which is unique by construction (spec/types.ts backendName). */
function aclConditions(r: AclRoute, acls: string[], defaultAlgo: DomainAlgo): string {
  const id = r.backend;
  const conds: string[] = [];
  const d = r.dest;
  if (d.servicePath.length > 0 && !(d.pathType === 'path_beg' && d.servicePath.includes('/'))) {
    // `--` ends HAProxy's ACL flags: no pattern can be taken for one.
    acls.push(`    acl url_${id} ${d.pathType} -- ${d.servicePath.join(' ')}`);
    conds.push(`url_${id}`);
  }
  if (d.servicePathExclude.length > 0) {
    acls.push(`    acl exclude_${id} ${d.pathType} -- ${d.servicePathExclude.join(' ')}`);
    conds.push(`!exclude_${id}`);
  }
  if (d.serviceDomain.length > 0) {
    const exact = d.serviceDomain.filter((x) => !x.startsWith('*.'));
    const wild = d.serviceDomain.filter((x) => x.startsWith('*.')).map((x) => x.slice(1));
    const algo = r.spec.serviceDomainAlgo ?? defaultAlgo;
    const fetch = algo === 'hdr(host)' ? 'str' : algo === 'hdr_beg(host)' ? 'beg' : algo === 'hdr_end(host)' ? 'end' : 'dom';
    if (exact.length > 0) acls.push(`    acl domain_${id} var(${V.host}) -m ${fetch} -- ${exact.join(' ')}`);
    if (wild.length > 0) acls.push(`    acl domain_${id} var(${V.host}) -m end -- ${wild.join(' ')}`);
    conds.push(`domain_${id}`);
  }
  if (d.srcPort !== undefined) {
    acls.push(`    acl srcport_${id} dst_port ${d.srcPort}`);
    conds.push(`srcport_${id}`);
  }
  d.serviceHeader.forEach((h, i) => {
    const c = h.indexOf(':');
    acls.push(`    acl header_${id}_${i} req.hdr(${h.slice(0, c)}) -m str -- ${h.slice(c + 1)}`);
    conds.push(`header_${id}_${i}`);
  });
  if (d.userAgent.length > 0) {
    acls.push(`    acl agent_${id} req.hdr(User-Agent) -m sub -i -- ${d.userAgent.map(quote).join(' ')}`);
    conds.push(`agent_${id}`);
  }
  return conds.join(' ');
}

function renderFrontend(settings: RenderSettings, routes: ReturnType<typeof buildRoutes>, use: ReadonlySet<string>, sniShared: ReadonlySet<number>): string[] {
  const file = (m: MapName) => `${settings.mapDir}/${MAP_FILES[m]}`;
  const binds = settings.listeners.filter((l) => !l.ssl || settings.crtList !== undefined);
  const out: string[] = [
    // The original's frontend name: its stats row (`services,FRONTEND`) is what dashboards read.
    'frontend services',
    ...binds.map((l) => bindLine(settings, l, sniShared)),
    '    mode http',
    // Without it a reload drops the request a keep-alive client sends on an idle connection. Here,
    // not in defaults: a mode tcp frontend would warn about it on every reload.
    '    option idle-close-on-response',
    '    option forwardfor',
    '    http-request set-header X-Forwarded-Proto https if { ssl_fc }',
    ...settings.requestLog.captureRequestHeaders.map((h) => `    capture request header ${h.name} len ${h.len}`),
    ...(settings.debug && settings.requestLog.httpFormat !== undefined ? [`    log-format ${quote(settings.requestLog.httpFormat)}`] : []),
    ...settings.extraFrontend.map((l) => `    ${l}`),
    // The Host is normalised once: port stripped, lower case. The path keeps its case.
    `    http-request set-var(${V.host}) req.hdr(host),field(1,:),lower`,
    `    http-request set-var(${V.path}) path`,
  ];
  // Only the lookups of the kinds of routes in use are rendered: a request pays for what the
  // configuration uses (docs/operations.md, "How a change is applied"). The first route of a kind
  // (the first wildcard domain, exclusion, redirect code…) changes the frontend and costs one
  // reload; every later one is a map entry on the runtime path.
  if (use.has('redirects')) {
    out.push(
      `    http-request set-var(${V.redirect}) var(${V.host}),map_str(${file('redirects')})`,
      `    http-request redirect prefix %[ssl_fc,iif(https,http)]://%[var(${V.redirect})] code 301 if { var(${V.redirect}) -m found }`,
    );
  }
  const hostLookups = [
    ...(use.has('hostsExact') ? [`var(${V.host}),map_str(${file('hostsExact')})`] : []),
    ...(use.has('hostsPrefix') ? [`var(${V.host}),map_beg(${file('hostsPrefix')})`] : []),
    ...(use.has('hostsWild') ? Array.from({ length: WILDCARD_DEPTH }, (_, i) => `var(${V.host}),field(${i + 2},.,0),map_str(${file('hostsWild')})`) : []),
    ...(use.has('hostsDom') ? [`var(${V.host}),map_dom(${file('hostsDom')})`] : []),
  ];
  for (const [i, sample] of hostLookups.entries()) out.push(`    http-request set-var(${V.vhost}) ${sample}${i === 0 ? '' : ` if !{ var(${V.vhost}) -m found }`}`);
  if (hostLookups.length > 0) out.push(`    http-request set-var(${V.key}) var(${V.vhost}),concat(,${V.path},) if { var(${V.vhost}) -m found }`);

  // The stats page on these listeners (no STATS_PORT): its URI wins over every route. Depends on
  // the settings only, like the rest of the frontend.
  const stats = settings.stats?.port === undefined ? settings.stats : undefined;
  if (stats) out.push(`    http-request set-var(${V.backend}) str(${STATS_SECTION}) if { pathq -m beg -- ${stats.uri} }`);

  // Routes the maps cannot hold, in two groups around the map lookups.
  const acls: string[] = [];
  const rules = (stage: AclRoute['stage']) =>
    routes.acl
      .filter((r) => r.stage === stage)
      .map((r) => {
        const conds = aclConditions(r, acls, settings.serviceDomainAlgo);
        return `    http-request set-var(${V.backend}) str(${r.backend}) if ${NOT_ROUTED}${conds ? ` ${conds}` : ''}`;
      });
  const conditional = rules('conditional');
  const pattern = rules('pattern');
  out.push(...acls, ...conditional);
  const when = (on: boolean, ...lines: string[]) => (on ? lines : []);
  out.push(
    // ACME challenges (/.well-known/...) win over host-specific catch-alls, as in the original.
    ...when(use.has('wellKnown'), `    http-request set-var(${V.backend}) var(${V.path}),map_beg(${file('prefix')}) if ${NOT_ROUTED} { path_beg /.well-known/ }`),
    ...when(use.has('keyedExact'), `    http-request set-var(${V.backend}) var(${V.key}),map_str(${file('exact')}) if ${NOT_ROUTED} { var(${V.key}) -m found }`),
    ...when(use.has('keyedPrefix'), `    http-request set-var(${V.backend}) var(${V.key}),map_beg(${file('prefix')}) if ${NOT_ROUTED} { var(${V.key}) -m found }`),
    ...when(use.has('pathExact'), `    http-request set-var(${V.backend}) var(${V.path}),map_str(${file('exact')}) if ${NOT_ROUTED}`),
    ...when(use.has('pathPrefix'), `    http-request set-var(${V.backend}) var(${V.path}),map_beg(${file('prefix')}) if ${NOT_ROUTED}`),
    // An excluded path of the chosen backend falls through to pattern routes and the catch-all.
    ...when(
      use.has('excludes'),
      `    http-request set-var(${V.exclude}) var(${V.backend}),concat(,${V.path},) if { var(${V.backend}) -m found }`,
      `    http-request unset-var(${V.backend}) if { var(${V.exclude}),map_beg(${file('excludes')}) -m found }`,
    ),
  );
  out.push(...pattern);
  // The host-less `/` and then the isDefaultBackend service, from a map: changing either needs no reload.
  out.push(
    ...when(use.has('fallbackRoot'), `    http-request set-var(${V.backend}) str(${FALLBACK.root}),map_str(${file('fallback')}) if ${NOT_ROUTED}`),
    ...when(use.has('fallbackDefault'), `    http-request set-var(${V.backend}) str(${FALLBACK.default}),map_str(${file('fallback')}) if ${NOT_ROUTED}`),
  );
  const flag = (f: string) => `{ var(${V.flags}) -m sub ,${f}, }`;
  // Client certificates are requested only with CA_FILE (and verifyClientSsl needs it).
  const verifyClient = settings.caFile !== undefined && use.has('flag:verifyclient');
  if ([...use].some((u) => u.startsWith('flag:'))) out.push(`    http-request set-var(${V.flags}) var(${V.backend}),map_str(${file('flags')}) if { var(${V.backend}) -m found }`);
  for (const code of REDIRECT_CODES) out.push(...when(use.has(`flag:https${code}`), `    http-request redirect scheme https code ${code} if !{ ssl_fc } ${flag(`https${code}`)}`));
  out.push(
    ...when(use.has('flag:denyhttp'), `    http-request deny deny_status 403 if !{ ssl_fc } ${flag('denyhttp')}`),
    ...when(use.has('flag:xfphttp'), `    http-request redirect scheme https if ${flag('xfphttp')} { req.hdr(X-Forwarded-Proto) -i http }`),
    ...when(use.has('flag:xfpnothttps'), `    http-request redirect scheme https if ${flag('xfpnothttps')} !{ req.hdr(X-Forwarded-Proto) -i https }`),
    ...when(
      verifyClient,
      `    http-request deny deny_status 403 if ${flag('verifyclient')} !{ ssl_c_used }`,
      `    http-request deny deny_status 403 if ${flag('verifyclient')} !{ ssl_c_verify 0 }`,
    ),
  );
  // By name, so `haproxy -c` checks that credentials.cfg defines the section.
  if (stats) out.push(`    use_backend ${STATS_SECTION} if { var(${V.backend}) -m str ${STATS_SECTION} }`);
  out.push(`    use_backend %[var(${V.backend})] if { var(${V.backend}) -m found }`);
  return out;
}

/**
 * The TCP-level frontends, one per port (withService keeps ports and server names unique), by
 * port: a reqMode=tcp destination has its port to itself (`tcpFE_<port>`); reqMode=sni
 * destinations share theirs (`sniFE_<port>`), routed on the ClientHello's server name with the
 * TLS left untouched: exact names first, then `*.` wildcards, then no match (the connection is
 * closed). Frontend settings (timeoutClient, clitcpka) come from the first destination on the port.
 */
function renderTcpFrontends(services: readonly ServiceState[], nameOf: (spec: ServiceSpec, dest: Destination) => string, settings: RenderSettings, sniShared: ReadonlySet<number>): string[] {
  const log = { debug: settings.debug, tcpFormat: settings.requestLog.tcpFormat };
  const byPort = new Map<number, { spec: ServiceSpec; dest: Destination }[]>();
  for (const { spec } of services) {
    for (const dest of spec.destinations) {
      if (dest.reqMode === 'http' || dest.srcPort === undefined) continue;
      byPort.set(dest.srcPort, [...(byPort.get(dest.srcPort) ?? []), { spec, dest }]);
    }
  }
  const out: string[] = [];
  for (const [port, dests] of [...byPort].sort((a, b) => a[0] - b[0])) {
    const first = dests[0];
    if (!first) continue;
    const sni = first.dest.reqMode === 'sni';
    // A TLS listener shared with passthrough: this frontend takes the port (with the listener's bind
    // options), and what no SNI rule claims goes on to be terminated by frontend services.
    const shared = sniShared.has(port) ? settings.listeners.find((l) => l.ssl && l.port === port) : undefined;
    const terminate = shared !== undefined && settings.crtList !== undefined;
    const connectionOptions = shared ? splitBindOptions(shared.options).connection : '';
    out.push(
      '',
      // The original's names: their stats rows (`tcpFE_6379,FRONTEND`) are what dashboards read.
      `frontend ${sni ? 'sniFE' : 'tcpFE'}_${port}`,
      `    bind *:${port}${connectionOptions ? ` ${connectionOptions}` : ''}`,
      '    mode tcp',
      ...(log.debug ? ['    option tcplog'] : []),
      ...(log.debug && log.tcpFormat !== undefined ? [`    log-format ${quote(log.tcpFormat)}`] : []),
      ...(first.dest.clitcpka ? ['    option clitcpka'] : []),
      ...(first.dest.timeoutClient !== undefined ? [`    timeout client ${first.dest.timeoutClient}s`] : []),
    );
    if (!sni) {
      out.push(`    default_backend ${nameOf(first.spec, first.dest)}`);
      continue;
    }
    out.push('    tcp-request inspect-delay 5s', '    tcp-request content accept if { req_ssl_hello_type 1 }');
    const exact = dests.map(({ spec, dest }) => ({ backend: nameOf(spec, dest), names: dest.serviceDomain.filter((d) => !d.startsWith('*.')) }));
    const wild = dests.map(({ spec, dest }) => ({ backend: nameOf(spec, dest), names: dest.serviceDomain.filter((d) => d.startsWith('*.')).map((d) => d.slice(1)) }));
    for (const r of exact) if (r.names.length > 0) out.push(`    use_backend ${r.backend} if { req_ssl_sni -i ${r.names.join(' ')} }`);
    // The longest suffix first: *.b.a.com wins over *.a.com whichever service came first.
    const wildNames = wild.flatMap((r) => r.names.map((name) => ({ backend: r.backend, name }))).sort((a, b) => b.name.length - a.name.length || (a.name < b.name ? -1 : 1));
    for (const r of wildNames) out.push(`    use_backend ${r.backend} if { req_ssl_sni -m end -i ${r.name} }`);
    if (terminate) {
      out.push(
        `    default_backend dfp-tls-${port}`,
        '',
        `backend dfp-tls-${port}`,
        '    mode tcp',
        `    server terminate ${tlsTermSocket(port)} send-proxy-v2`,
      );
    }
  }
  return out;
}

/**
 * The frontend lookups these maps need, by name (`hostsPrefix`, `flag:https301`…). Host-less route
 * keys start with `/`; keys under a virtual host start with its algorithm tag (routes.ts). Flag
 * values are `,flag,flag,` lists.
 */
function inUse(maps: RouteTable['maps']): Set<string> {
  const use = new Set<string>();
  const mark = (name: string, on: boolean) => {
    if (on) use.add(name);
  };
  const hostless = (k: string) => k.startsWith('/');
  const prefixes = [...maps.prefix.keys()];
  const exact = [...maps.exact.keys()];
  for (const m of ['redirects', 'hostsExact', 'hostsPrefix', 'hostsWild', 'hostsDom', 'excludes'] as const) mark(m, maps[m].size > 0);
  // A host-less prefix that a /.well-known/ path can start with, or that starts with one.
  mark('wellKnown', prefixes.some((k) => hostless(k) && (k.startsWith(WELL_KNOWN) || WELL_KNOWN.startsWith(k))));
  mark('keyedExact', exact.some((k) => !hostless(k)));
  mark('keyedPrefix', prefixes.some((k) => !hostless(k)));
  mark('pathExact', exact.some(hostless));
  mark('pathPrefix', prefixes.some(hostless));
  mark('fallbackRoot', maps.fallback.has(FALLBACK.root));
  mark('fallbackDefault', maps.fallback.has(FALLBACK.default));
  for (const v of maps.flags.values()) for (const f of v.split(',')) if (f) use.add(`flag:${f}`);
  return use;
}

const WELL_KNOWN = '/.well-known/';

/** SSL_BIND_OPTIONS towards servers too, but for `prefer-client-ciphers`, which only a bind takes. */
function serverSslOptions(options: string): string {
  return options
    .split(' ')
    .filter((w) => w !== 'prefer-client-ciphers')
    .join(' ');
}

/** A map entry a service added at run time needs. */
export interface MapEntry {
  readonly map: MapName;
  readonly key: string;
  readonly value: string;
}

/**
 * What adding this service at run time, on the backend names `nameOf` gives (spares), puts in the
 * maps, and which frontend lookups those entries need: what renderConfig would add for it, derived
 * from this one service. Undefined when it needs more than map entries and slots (a TCP or SNI
 * frontend, ACL routes, a userlist, a DNS target, a backend whose lines differ from a spare's): the
 * caller renders everything then.
 */
export function runtimeAddition(
  settings: RenderSettings,
  spec: ServiceSpec,
  nameOf: (dest: Destination) => string,
  slotsOf: (name: string) => number,
  spareChecks = true,
): { entries: MapEntry[]; lookups: string[] } | undefined {
  const routed = routedSpec(spec);
  if (routed.destinations.some((d) => d.reqMode !== 'http' || dnsTarget(spec, d) !== undefined)) return undefined;
  if (spec.sessionType !== undefined || effectiveUsers(settings, spec) !== undefined) return undefined;
  const userlist = globalUserlist(settings);
  const names = routed.destinations.map(nameOf);
  for (const [i, dest] of routed.destinations.entries()) {
    const name = names[i] as string;
    const count = slotsOf(name);
    const built = buildBackend(routed, dest, Array.from({ length: count }, (_, k) => ({ name: slotName(k) })), userlist, name);
    if (renderBackend(built, false).join('\n') !== renderBackend(spareBackend(name, count, spareChecks), false).join('\n')) return undefined;
  }
  const plan = claimsOf(
    routed,
    names,
    routed.destinations.map((d) => routeFlags(settings, routed, d)),
    routed.serviceDomainAlgo ?? settings.serviceDomainAlgo,
  );
  if (plan.acl.length > 0) return undefined;
  const maps = Object.fromEntries(MAP_NAMES.map((m) => [m, new Map<string, string>()])) as Record<MapName, Map<string, string>>;
  const entries: MapEntry[] = [];
  for (const c of plan.claims) {
    // A key claimed twice by one service: the same value is one entry; another is a conflict, which only a full render reports.
    const had = maps[c.map].get(c.key);
    if (had !== undefined && had !== c.value) return undefined;
    if (had !== undefined) continue;
    maps[c.map].set(c.key, c.value);
    entries.push({ map: c.map, key: c.key, value: c.value });
  }
  return { entries, lookups: [...inUse(maps)] };
}
