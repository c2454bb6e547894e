import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import type { ConsulAccess } from '../consul/client.js';
import { SettingsError } from '../errors.js';
import type { Listener } from '../render/haproxy-config.js';
import { checkMime, checkUser, parseBool } from '../spec/grammar.js';
import { COMPRESSION_ALGOS, CONNECTION_MODES, type ConnectionMode, DOMAIN_ALGOS, type DomainAlgo } from '../spec/types.js';
import { LEVELS, type Level, LOG_FORMATS, type LogFormat } from '../util/log.js';
import { PROJECT_ROOT } from '../util/project.js';

/** Everything the proxy reads from its environment, validated once at start-up. */
export interface Settings {
  /** API listen address and port (`IP`, `PORT`). */
  readonly apiHost: string;
  readonly apiPort: number;
  /** HAProxy binds of `frontend services` (`DEFAULT_PORTS` + `BIND_PORTS`); `:ssl` ones terminate TLS. */
  readonly listeners: readonly Listener[];
  /** Plain-HTTP ports of the listeners, in order (the first is where the walkthrough's curl goes). */
  readonly bindPorts: readonly number[];
  /** Everything written at run time lives below this directory (`STATE_DIR`). */
  readonly stateDir: string;
  /** Consul HTTP addresses tried in order; empty = start a local single-node Consul. */
  readonly consulAddresses: readonly string[];
  /**
   * How the proxy proves itself to Consul and which Consul it trusts: CONSUL_HTTP_TOKEN (sent as
   * X-Consul-Token), CONSUL_CACERT, CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY (https addresses).
   */
  readonly consulAccess: ConsulAccess;
  /** API_USER/API_PASSWORD and API_TOKEN: the credentials the API requires; undefined = an open API. */
  readonly apiAuth: ApiAuth | undefined;
  readonly proxyInstanceName: string;
  readonly separator: string;
  readonly timeouts: Readonly<Timeouts>;
  readonly connectionMode: ConnectionMode;
  readonly haproxyBin: string;
  /**
   * HAPROXY_ON_STOP: what SIGTERM/SIGINT of the proxy do to HAProxy. `stop` (default): it stops
   * with the proxy. `keep`: it keeps serving, and the next start with this STATE_DIR takes it over.
   */
  readonly haproxyOnStop: 'stop' | 'keep';
  readonly consulBin: string;
  readonly maxconn: number;
  /** How old HAProxy workers drain after a reload (render/haproxy-config.ts `global`). */
  readonly drain: Readonly<Drain>;
  /** The `DFP_SERVICE_*` variables: services defined by the environment (sources/env-services.ts). */
  readonly serviceVariables: Readonly<Record<string, string>>;
  /** `reqMode` of services from the environment that do not set one (`DEFAULT_PROTOCOL`). */
  readonly defaultProtocol: 'http' | 'tcp';
  /**
   * Name servers for DNS targets (`outboundHostname`), `name ip:port` each, from `RESOLVERS`; empty:
   * the machine's /etc/resolv.conf (`parse-resolv-conf`).
   */
  readonly resolvers: readonly { readonly name: string; readonly address: string }[];
  /** `DEFAULT_REQ_MODE`: only `http` (see loadSettings). */
  readonly defaultReqMode: 'http';
  /**
   * `DISCOVERY`: `dns` routes a service that names no `discoveryType` and that Consul does not know
   * when it is reconfigured to its DNS name (`discoveryType=dns`); `consul` (default) never does.
   */
  readonly discovery: 'consul' | 'dns';
  /** The Docker Flow Swarm Listener's base URL (`LISTENER_ADDRESS`), pulled at start-up. */
  readonly listenerUrl: string | undefined;
  /** How long to wait between tries of the listener at start-up, ms (`RELOAD_INTERVAL`). */
  readonly reloadInterval: number;
  readonly debug: boolean;
  /** What HAProxy logs per request and what it captures (DEBUG_*, CAPTURE_REQUEST_HEADER). */
  readonly requestLog: Readonly<RequestLog>;
  readonly logLevel: Level;
  /** `LOG_FORMAT`: json or pretty; undefined = pretty when stderr is a terminal, else json. */
  readonly logFormat: LogFormat | undefined;
  /** `METRICS`: the control plane's own Prometheus metrics on the API port (`/metrics`). */
  readonly metrics: boolean;
  /** `PROMETHEUS_PORT`: HAProxy's own Prometheus exporter on this port; undefined = off. */
  readonly prometheusPort: number | undefined;
  /** Route only to instances whose Consul checks pass (false: every registered instance). */
  readonly consulPassingOnly: boolean;
  /** Blocking-query wait of the Consul watches, seconds. */
  readonly consulWatchWait: number;
  /** CONSUL_MAX_WATCHES, deprecated: accepted and ignored (start-up warns); discovery's queries follow nodes now. */
  readonly consulMaxWatches: string | undefined;
  /** CONSOLIDATE_AFTER, removed: accepted and ignored (start-up warns); server slots need no consolidation reload. */
  readonly consolidateAfter: string | undefined;
  /** Connections per Consul address for blocking queries (`CONSUL_WATCH_CONNECTIONS`). */
  readonly consulWatchConnections: number;
  /** Connections per Consul address for every other request (`CONSUL_REQUEST_CONNECTIONS`). */
  readonly consulRequestConnections: number;
  /** Empty backends kept for services added without a reload (at least; grows with services). */
  readonly spareBackends: number;
  /** SERVER_SLOTS: the fewest config-defined server slots per backend (render/slots.ts). */
  readonly serverSlots: number;
  /** This replica's name in the fleet's replica list; default `<hostname>:<API port>`. */
  readonly replicaId: string | undefined;
  /** How long `wait=all` (and `distribute=true`) waits for every replica, seconds. */
  readonly replicaWaitTimeout: number;
  readonly http: HttpSettings;
  readonly secretsDir: string;
  /** FILTER_PROXY_INSTANCE_NAME: only accept reconfigures whose proxyInstanceName is PROXY_INSTANCE_NAME. */
  readonly filterProxyInstanceName: boolean;
  /** STATS_*: HAProxy's stats page, or undefined when disabled (the default). */
  readonly stats: StatsSettings | undefined;
}

/**
 * Credentials the API accepts (api/auth.ts): HTTP basic with `basic`, `Authorization: Bearer` with
 * `token`, either when both are set. Never shown by the API or logged.
 */
export interface ApiAuth {
  readonly basic: { readonly user: string; readonly password: string } | undefined;
  readonly token: string | undefined;
}

/** The stats page (`STATS_USER`, `STATS_PASS`, `STATS_URI`, `STATS_PORT`). */
export interface StatsSettings {
  /** Starts with `/`; matched as a prefix of path + query, like HAProxy's `stats uri`. */
  readonly uri: string;
  /** A listener of its own; undefined = served on the HTTP listeners of `frontend services`. */
  readonly port: number | undefined;
  /** Basic-auth credentials; undefined for `none`/`none` (no auth). Never shown by the API. */
  readonly auth: { readonly user: string; readonly pass: string } | undefined;
}

export interface HttpSettings {
  readonly serviceDomainAlgo: DomainAlgo;
  readonly httpsOnly: boolean;
  readonly users: readonly string[];
  readonly usersPassEncrypted: boolean;
  readonly userSecrets: ReadonlyMap<string, readonly string[]>;
  /** Certificates loaded at start-up and kept by the proxy (`CERTS_DIR`, default STATE_DIR/certs). */
  readonly certsDir: string;
  readonly enableH2: boolean;
  readonly caFile: string | undefined;
  readonly extraGlobal: readonly string[];
  readonly extraFrontend: readonly string[];
  /** SSL_BIND_OPTIONS / SSL_BIND_CIPHERS: `ssl-default-bind-*` (and server options) in `global`. */
  readonly ssl: { readonly options: string | undefined; readonly ciphers: string | undefined };
  readonly compression: { readonly algo: readonly string[]; readonly type: readonly string[] };
  /** PREFERRED_CERTIFICATE: globs of certificate names listed first in the crt-list (the default for unknown names). */
  readonly preferredCertificates: readonly string[];
  /** CRT_LIST_PATH: an operator's crt-list, checked line by line and merged with the managed certificates at start-up (src/certs/crt-list.ts). */
  readonly crtListPath: string | undefined;
}

export interface RequestLog {
  /** `DEBUG_ERRORS_ONLY`: with DEBUG, log only requests that failed. */
  readonly errorsOnly: boolean;
  /** `DEBUG_HTTP_FORMAT` / `DEBUG_TCP_FORMAT`: HAProxy `log-format` strings (operator input, checked by `haproxy -c`). */
  readonly httpFormat: string | undefined;
  readonly tcpFormat: string | undefined;
  /** `CAPTURE_REQUEST_HEADER` (`Host:15,X-Forwarded-For:20`): headers captured into the logs. */
  readonly captureRequestHeaders: readonly { readonly name: string; readonly len: number }[];
}

export interface Drain {
  /** `hard-stop-after`: the longest an old worker keeps its connections after a reload, seconds. */
  readonly hardStopAfter: number;
  /** `mworker-max-reloads`: an old worker still draining after this many more reloads is stopped. */
  readonly maxReloads: number;
}

export interface Timeouts {
  connect: number;
  client: number;
  server: number;
  queue: number;
  tunnel: number;
  httpRequest: number;
  httpKeepAlive: number;
}


type Env = Record<string, string | undefined>;

/**
 * A Docker secret `dfp_<lower-case name>` in SECRETS_DIR (default /run/secrets) overrides the env
 * variable of the same name, as in the original.
 */
/**
 * `LISTENER_ADDRESS` as the original took it, a host (`swarm-listener`, port 8080 implied) or
 * `host:port`; a full `http(s)://` URL is taken as is.
 */
function listenerUrl(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const withScheme = /^https?:\/\//.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new SettingsError('LISTENER_ADDRESS', `must be a host, host:port or an http(s) URL; got ${JSON.stringify(raw)}`);
  }
  if (url.username || url.password || url.search || url.hash) throw new SettingsError('LISTENER_ADDRESS', 'must not carry credentials, a query or a fragment');
  if (!/^https?:\/\//.test(raw) && url.port === '') url.port = '8080';
  return url.toString().replace(/\/+$/, '');
}

function lookup(env: Env, name: string): string | undefined {
  const secretsDir = env.SECRETS_DIR ?? '/run/secrets';
  const file = path.join(secretsDir, `dfp_${name.toLowerCase()}`);
  if (existsSync(file)) return readFileSync(file, 'utf8').replace(/[\r\n]+$/, '');
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = lookup(env, name);
  if (raw === undefined) return fallback;
  if (!/^[0-9]+$/.test(raw)) throw new SettingsError(name, `must be an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw new SettingsError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = lookup(env, name);
  if (raw === undefined) return fallback;
  const parsed = parseBool(raw);
  if (parsed !== undefined) return parsed;
  throw new SettingsError(name, `must be true or false, got ${JSON.stringify(raw)}`);
}

/** `80`, `443:ssl`, `80 accept-proxy`: a port, an optional `:ssl`, optional extra bind keywords. */
function listeners(env: Env, name: string, fallback: string): Listener[] {
  const raw = lookup(env, name) ?? fallback;
  if (raw.trim() === '') return [];
  return raw.split(',').map((item) => {
    const m = /^\s*([0-9]{1,5})(:ssl)?(?:\s+([A-Za-z0-9 ._:/@=-]+))?\s*$/.exec(item);
    const port = Number(m?.[1]);
    if (!m || port < 1 || port > 65535) {
      throw new SettingsError(name, `each item must be a port 1-65535, optionally with :ssl and bind keywords (e.g. 80, 443:ssl, 80 accept-proxy); got ${JSON.stringify(item.trim())}`);
    }
    return { port, ssl: m[2] !== undefined, options: (m[3] ?? '').trim().replace(/\s+/g, ' ') };
  });
}

function list(env: Env, name: string, item: (s: string) => string, separator = ','): string[] {
  const raw = lookup(env, name);
  if (raw === undefined) return [];
  return raw
    .split(separator)
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      try {
        return item(s);
      } catch (err) {
        throw new SettingsError(name, (err as Error).message);
      }
    });
}

function oneOf<T extends string>(env: Env, name: string, values: readonly T[], fallback: T): T {
  const raw = lookup(env, name) ?? fallback;
  if (!(values as readonly string[]).includes(raw)) throw new SettingsError(name, `must be one of ${values.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw as T;
}

/** Users files `dfp_users_<name>` in the secrets directory: `name:password` per line or comma. */
function userSecrets(secretsDir: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (!existsSync(secretsDir)) return out;
  for (const file of readdirSync(secretsDir)) {
    const m = /^dfp_users_([A-Za-z0-9][A-Za-z0-9_.-]*)$/.exec(file);
    if (!m?.[1]) continue;
    const items = readFileSync(path.join(secretsDir, file), 'utf8')
      .split(/[\n,]/)
      .map((s) => s.trim())
      .filter((s) => s !== '');
    for (const u of items) {
      try {
        checkUser(file, u);
      } catch {
        throw new SettingsError(file, `${path.join(secretsDir, file)}: every line must be name:password`);
      }
    }
    out.set(m[1], items);
  }
  return out;
}

export function normaliseConsulAddress(raw: string): string {
  const trimmed = raw.trim().replace(/\/+$/, '');
  return /^https?:\/\//.test(trimmed) ? trimmed : `http://${trimmed}`;
}

export function loadSettings(env: Env = process.env): Settings {
  const consulRaw = lookup(env, 'CONSUL_ADDRESS');
  const consulAddresses = consulRaw
    ? consulRaw
        .split(',')
        .map((a) => a.trim())
        .filter((a) => a !== '')
        .map(normaliseConsulAddress)
    : [];
  for (const a of consulAddresses) {
    try {
      new URL(a);
    } catch {
      throw new SettingsError('CONSUL_ADDRESS', `not a valid address: ${JSON.stringify(a)}`);
    }
  }
  const instance = lookup(env, 'PROXY_INSTANCE_NAME') ?? 'docker-flow';
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(instance)) {
    throw new SettingsError('PROXY_INSTANCE_NAME', 'letters, digits, _ . - only (max 64)');
  }
  const separator = lookup(env, 'SEPARATOR') ?? ',';
  if (separator.length !== 1 || /[\sA-Za-z0-9]/.test(separator)) {
    throw new SettingsError('SEPARATOR', 'must be a single punctuation character');
  }
  const connectionMode = oneOf(env, 'CONNECTION_MODE', CONNECTION_MODES, 'http-keep-alive');
  const all = [...listeners(env, 'DEFAULT_PORTS', '80,443:ssl'), ...listeners(env, 'BIND_PORTS', '')];
  const seen = new Set<number>();
  const binds = all.filter((l) => !seen.has(l.port) && seen.add(l.port));
  const secretsDir = env.SECRETS_DIR ?? '/run/secrets';
  const apiHost = lookup(env, 'IP') ?? '0.0.0.0';
  const stateDir = path.resolve(lookup(env, 'STATE_DIR') ?? './data');
  // The path is written into haproxy.cfg and names UNIX sockets (max 108 bytes).
  if (!/^[A-Za-z0-9/_.+-]+$/.test(stateDir) || stateDir.length > 80) {
    throw new SettingsError('STATE_DIR', `must be a path of at most 80 characters using letters, digits and / _ . + - (got ${JSON.stringify(stateDir)})`);
  }
  const day = 86_400;
  const tunnel = int(env, 'TIMEOUT_TUNNEL', 3600, 0, day);
  // The original's switches for unresolvable names: checked, and always on here (DNS targets start
  // unresolved, init-addr none, and HAProxy re-resolves them at run time).
  bool(env, 'CHECK_RESOLVERS', false);
  bool(env, 'DO_NOT_RESOLVE_ADDR', false);
  return {
    apiHost,
    apiPort: int(env, 'PORT', 8080, 0, 65535),
    listeners: binds,
    bindPorts: binds.filter((l) => !l.ssl).map((l) => l.port),
    stateDir,
    consulAddresses,
    consulAccess: consulAccess(env),
    apiAuth: apiAuth(env),
    proxyInstanceName: instance,
    separator,
    timeouts: {
      connect: int(env, 'TIMEOUT_CONNECT', 5, 0, day),
      client: int(env, 'TIMEOUT_CLIENT', 20, 0, day),
      server: int(env, 'TIMEOUT_SERVER', 20, 0, day),
      queue: int(env, 'TIMEOUT_QUEUE', 30, 0, day),
      tunnel,
      httpRequest: int(env, 'TIMEOUT_HTTP_REQUEST', 5, 0, day),
      httpKeepAlive: int(env, 'TIMEOUT_HTTP_KEEP_ALIVE', 15, 0, day),
    },
    connectionMode: connectionMode as ConnectionMode,
    secretsDir,
    filterProxyInstanceName: bool(env, 'FILTER_PROXY_INSTANCE_NAME', false),
    stats: statsSettings(env, binds),
    http: {
      serviceDomainAlgo: oneOf(env, 'SERVICE_DOMAIN_ALGO', DOMAIN_ALGOS, 'hdr_beg(host)') as DomainAlgo,
      httpsOnly: bool(env, 'HTTPS_ONLY', false),
      users: list(env, 'USERS', (u) => {
        checkUser('USERS', u);
        if (!u.includes(':')) throw new Error(`USERS items need a password: ${u}`);
        return u;
      }),
      usersPassEncrypted: bool(env, 'USERS_PASS_ENCRYPTED', false),
      userSecrets: userSecrets(secretsDir),
      certsDir: filePath(env, 'CERTS_DIR') ?? path.join(stateDir, 'certs'),
      enableH2: bool(env, 'ENABLE_H2', true),
      caFile: filePath(env, 'CA_FILE'),
      // Operator input, raw HAProxy lines; each comma starts a new line (the original's rule).
      extraGlobal: list(env, 'EXTRA_GLOBAL', (l) => rawLine('EXTRA_GLOBAL', l)),
      extraFrontend: list(env, 'EXTRA_FRONTEND', (l) => rawLine('EXTRA_FRONTEND', l)),
      ssl: {
        // Operator input, checked by `haproxy -c` at start-up; the grammar only keeps it one config line of words.
        options: sslBindOptions(env),
        ciphers: matching(env, 'SSL_BIND_CIPHERS', /^[A-Za-z0-9:!+@_.-]+$/, 'an OpenSSL cipher list, e.g. ECDHE-RSA-AES128-GCM-SHA256:!aNULL'),
      },
      compression: {
        algo: list(env, 'COMPRESSION_ALGO', (a) => oneOfValue(a, COMPRESSION_ALGOS), ' '),
        type: list(env, 'COMPRESSION_TYPE', (t) => checkMime('COMPRESSION_TYPE', t), ' '),
      },
      preferredCertificates: list(env, 'PREFERRED_CERTIFICATE', (g) => g),
      crtListPath: filePath(env, 'CRT_LIST_PATH'),
    },
    haproxyBin: lookup(env, 'HAPROXY_BIN') ?? 'haproxy',
    haproxyOnStop: oneOf(env, 'HAPROXY_ON_STOP', ['stop', 'keep'] as const, 'stop'),
    consulBin: lookup(env, 'CONSUL_BIN') ?? path.join(PROJECT_ROOT, '.tools/bin/consul'),
    maxconn: int(env, 'MAXCONN', 4000, 1, 1_000_000),
    drain: {
      // A tunnel (WebSocket, TCP) idle for TIMEOUT_TUNNEL is closed anyway: by default an old worker
      // may wait that long for its last one.
      // TIMEOUT_TUNNEL=0 means no tunnel timeout: then an hour, not a second. TERMINATE_ON_RELOAD
      // (the original's -st): old workers stop within a second of a reload.
      hardStopAfter: int(env, 'HARD_STOP_AFTER', bool(env, 'TERMINATE_ON_RELOAD', false) ? 1 : tunnel > 0 ? tunnel : 3600, 1, 7 * day),
      maxReloads: int(env, 'WORKER_MAX_RELOADS', 10, 1, 1000),
    },
    serviceVariables: Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[0].startsWith('DFP_SERVICE_') && typeof e[1] === 'string')),
    defaultProtocol: oneOf(env, 'DEFAULT_PROTOCOL', ['http', 'tcp'] as const, 'http'),
    // The original's `mode` of frontend services: routing by host and path needs http; TCP
    // services get frontends of their own (reqMode=tcp), so tcp here is refused, not ignored.
    defaultReqMode: oneOf(env, 'DEFAULT_REQ_MODE', ['http'] as const, 'http'),
    discovery: oneOf(env, 'DISCOVERY', ['consul', 'dns'] as const, 'consul'),
    resolvers: resolvers(env),
    listenerUrl: listenerUrl(lookup(env, 'LISTENER_ADDRESS')),
    reloadInterval: int(env, 'RELOAD_INTERVAL', 5000, 10, 3_600_000),
    debug: bool(env, 'DEBUG', false),
    requestLog: {
      errorsOnly: bool(env, 'DEBUG_ERRORS_ONLY', false),
      httpFormat: logFormat(env, 'DEBUG_HTTP_FORMAT'),
      tcpFormat: logFormat(env, 'DEBUG_TCP_FORMAT'),
      captureRequestHeaders: list(env, 'CAPTURE_REQUEST_HEADER', captureItem).map((item) => {
        const [name = '', len = ''] = item.split(':');
        return { name, len: Number(len) };
      }),
    },
    logLevel: oneOf(env, 'LOG_LEVEL', LEVELS, 'info'),
    logFormat: lookup(env, 'LOG_FORMAT') === undefined ? undefined : oneOf(env, 'LOG_FORMAT', LOG_FORMATS, 'json'),
    metrics: bool(env, 'METRICS', true),
    prometheusPort: prometheusPort(env, binds),
    consulPassingOnly: bool(env, 'CONSUL_PASSING_ONLY', true),
    consulWatchWait: int(env, 'CONSUL_WATCH_WAIT', 300, 1, 600),
    consulMaxWatches: lookup(env, 'CONSUL_MAX_WATCHES'),
    consolidateAfter: lookup(env, 'CONSOLIDATE_AFTER'),
    // The change log's KV watch (specs and certificates), the node list or the change detector, the
    // checks and a node query need 4; 5 at least leaves discovery a second node query.
    consulWatchConnections: int(env, 'CONSUL_WATCH_CONNECTIONS', 8, 5, 1000),
    consulRequestConnections: int(env, 'CONSUL_REQUEST_CONNECTIONS', 2, 1, 1000),
    spareBackends: int(env, 'SPARE_BACKENDS', 16, 0, 100_000),
    serverSlots: int(env, 'SERVER_SLOTS', 4, 1, 1024),
    replicaId: lookup(env, 'REPLICA_ID'),
    replicaWaitTimeout: int(env, 'REPLICA_WAIT_TIMEOUT', 10, 1, 3600),
  };
}

/**
 * STATS_USER / STATS_PASS (both empty: disabled; `none`/`none`: no auth), STATS_URI, STATS_PORT,
 * and the `*_ENV` indirections naming the variable to read each value from. Error messages never
 * echo a credential.
 */
function statsSettings(env: Env, binds: readonly Listener[]): StatsSettings | undefined {
  const indirect = (name: string): string => {
    const target = lookup(env, `${name}_ENV`) ?? name;
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(target)) throw new SettingsError(`${name}_ENV`, `must name an environment variable (letters, digits, _), got ${JSON.stringify(target)}`);
    return target;
  };
  const userVar = indirect('STATS_USER');
  const passVar = indirect('STATS_PASS');
  const uriVar = indirect('STATS_URI');
  const user = lookup(env, userVar);
  const pass = lookup(env, passVar);
  const uri = lookup(env, uriVar) ?? '/admin?stats';
  if (!/^\/[A-Za-z0-9\-._~!$&()*+,;=:@%/?]*$/.test(uri)) {
    throw new SettingsError(uriVar, `must start with / and use URL characters only (no quotes, spaces, # or backslash), got ${JSON.stringify(uri)}`);
  }
  // Port first, so a bad STATS_PORT is reported even while the page is disabled.
  const port = lookup(env, 'STATS_PORT') === undefined ? undefined : int(env, 'STATS_PORT', 0, 1, 65535);
  if (port !== undefined && binds.some((l) => l.port === port)) {
    throw new SettingsError('STATS_PORT', `${port} is already a listener of frontend services (DEFAULT_PORTS/BIND_PORTS); leave STATS_PORT empty to serve the stats page there`);
  }
  if (user === undefined && pass === undefined) return undefined;
  if (user === undefined) throw new SettingsError(userVar, `is empty while ${passVar} is set: set both (or none/none for a page without auth)`);
  if (pass === undefined) throw new SettingsError(passVar, `is empty while ${userVar} is set: set both (or none/none for a page without auth)`);
  if ((user === 'none') !== (pass === 'none')) {
    throw new SettingsError(user === 'none' ? passVar : userVar, 'none disables the stats authentication only when both the user and the password are none');
  }
  // Printable ASCII without space (`!` to `~`), minus what HAProxy's config parser reads specially.
  const ok = (v: string) => /^[!-~]+$/.test(v) && !/["'\\#]/.test(v);
  if (!ok(user) || user.includes(':')) throw new SettingsError(userVar, 'must be printable ASCII without whitespace, quotes, backslashes, # or :');
  if (!ok(pass)) throw new SettingsError(passVar, 'must be printable ASCII without whitespace, quotes, backslashes or # (value not shown)');
  return { uri, port, auth: user === 'none' ? undefined : { user, pass } };
}

/**
 * PROMETHEUS_PORT: a port of its own for HAProxy's exporter, never one of the listeners, the API's
 * or the stats page's.
 */
function prometheusPort(env: Env, binds: readonly Listener[]): number | undefined {
  if (lookup(env, 'PROMETHEUS_PORT') === undefined) return undefined;
  const port = int(env, 'PROMETHEUS_PORT', 0, 1, 65535);
  if (binds.some((l) => l.port === port)) throw new SettingsError('PROMETHEUS_PORT', `${port} is already a listener of frontend services (DEFAULT_PORTS/BIND_PORTS)`);
  if (lookup(env, 'STATS_PORT') === String(port)) throw new SettingsError('PROMETHEUS_PORT', `${port} is already the stats page's port (STATS_PORT)`);
  if (int(env, 'PORT', 8080, 0, 65535) === port) throw new SettingsError('PROMETHEUS_PORT', `${port} is already the API's port (PORT)`);
  return port;
}

/**
 * API_USER / API_PASSWORD (both or neither) and API_TOKEN. Messages name the variable and never
 * echo a value.
 */
function apiAuth(env: Env): ApiAuth | undefined {
  const user = lookup(env, 'API_USER');
  const password = lookup(env, 'API_PASSWORD');
  const token = lookup(env, 'API_TOKEN');
  if (user !== undefined && password === undefined) throw new SettingsError('API_PASSWORD', 'is empty while API_USER is set: basic auth of the API needs both (or neither)');
  if (password !== undefined && user === undefined) throw new SettingsError('API_USER', 'is empty while API_PASSWORD is set: basic auth of the API needs both (or neither)');
  // RFC 7617: the user name ends at the first colon; control characters cannot be typed into a client.
  if (user !== undefined && (/[\p{Cc}:]/u.test(user) || user.trim() !== user)) throw new SettingsError('API_USER', 'must not contain a colon, control characters or leading/trailing spaces (value not shown)');
  if (password !== undefined && /\p{Cc}/u.test(password)) throw new SettingsError('API_PASSWORD', 'must not contain control characters such as line breaks (value not shown)');
  // RFC 6750's b64token: what can follow `Bearer ` in a header without quoting.
  if (token !== undefined && !/^[A-Za-z0-9._~+/-]+=*$/.test(token)) {
    throw new SettingsError('API_TOKEN', 'must use only letters, digits and - . _ ~ + / (then optional = padding), e.g. the output of openssl rand -hex 32 (value not shown)');
  }
  if (user === undefined && token === undefined) return undefined;
  return { basic: user !== undefined && password !== undefined ? { user, password } : undefined, token };
}

/** A PEM file named by a variable, read at start-up: an unreadable or non-PEM file stops start-up naming the variable. */
function pemFile(env: Env, name: string, kind: 'CERTIFICATE' | 'PRIVATE KEY'): string | undefined {
  const file = lookup(env, name);
  if (file === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SettingsError(name, `cannot read ${JSON.stringify(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!new RegExp(`-----BEGIN [A-Z ]*${kind}-----`).test(text)) throw new SettingsError(name, `${JSON.stringify(file)} holds no PEM ${kind.toLowerCase()}`);
  return text;
}

/**
 * Consul's own variables: CONSUL_HTTP_TOKEN (or the file CONSUL_HTTP_TOKEN_FILE names),
 * CONSUL_CACERT, CONSUL_CLIENT_CERT + CONSUL_CLIENT_KEY. Checked here (a CA that does not parse, a
 * key that does not match its certificate) so a mistake stops start-up instead of failing every
 * request later. The token and the key are never echoed.
 */
function consulAccess(env: Env): ConsulAccess {
  let token = lookup(env, 'CONSUL_HTTP_TOKEN');
  const tokenFile = token === undefined ? lookup(env, 'CONSUL_HTTP_TOKEN_FILE') : undefined;
  if (tokenFile !== undefined) {
    try {
      token = readFileSync(tokenFile, 'utf8').trim();
    } catch (err) {
      throw new SettingsError('CONSUL_HTTP_TOKEN_FILE', `cannot read ${JSON.stringify(tokenFile)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  // It goes into a request header: one word of printable ASCII.
  if (token !== undefined && !/^[\x21-\x7e]+$/.test(token)) throw new SettingsError(tokenFile !== undefined ? 'CONSUL_HTTP_TOKEN_FILE' : 'CONSUL_HTTP_TOKEN', 'must be printable ASCII without spaces (value not shown)');
  const ca = pemFile(env, 'CONSUL_CACERT', 'CERTIFICATE');
  const cert = pemFile(env, 'CONSUL_CLIENT_CERT', 'CERTIFICATE');
  const key = pemFile(env, 'CONSUL_CLIENT_KEY', 'PRIVATE KEY');
  if (cert !== undefined && key === undefined) throw new SettingsError('CONSUL_CLIENT_KEY', 'is empty while CONSUL_CLIENT_CERT is set: a client certificate needs its key');
  if (key !== undefined && cert === undefined) throw new SettingsError('CONSUL_CLIENT_CERT', 'is empty while CONSUL_CLIENT_KEY is set: a client key needs its certificate');
  if (ca !== undefined) {
    // Each certificate of the bundle parsed: OpenSSL skips a damaged one silently.
    for (const block of ca.match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) ?? []) {
      try {
        new X509Certificate(block);
      } catch (err) {
        throw new SettingsError('CONSUL_CACERT', `holds a certificate that does not parse: ${(err as Error).message}`);
      }
    }
  }
  if (cert !== undefined && key !== undefined) {
    try {
      createSecureContext({ cert, key });
    } catch (err) {
      // OpenSSL's reason (e.g. "key values mismatch") names no key material.
      throw new SettingsError('CONSUL_CLIENT_KEY', `does not fit CONSUL_CLIENT_CERT: ${(err as Error).message}`);
    }
  }
  return {
    ...(token !== undefined ? { token } : {}),
    ...(ca !== undefined || cert !== undefined ? { tls: { ...(ca !== undefined ? { ca } : {}), ...(cert !== undefined && key !== undefined ? { cert, key } : {}) } } : {}),
  };
}

function resolvers(env: Env): { name: string; address: string }[] {
  const out = list(env, 'RESOLVERS', resolverItem).map((item, i) => {
    const parts = item.split(/\s+/);
    return { name: parts.length === 3 ? (parts[1] ?? `dfp-ns${i + 1}`) : `dfp-ns${i + 1}`, address: parts.at(-1) ?? '' };
  });
  const names = out.map((r) => r.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw new SettingsError('RESOLVERS', `the name server name ${twice} is given twice`);
  return out;
}

/** `nameserver <name> <ip>:<port>` (the original's form) or `<ip>:<port>`; an IPv4 or bracketed IPv6 literal. */
function resolverItem(item: string): string {
  const parts = item.split(/\s+/);
  const ok = (parts.length === 1 || (parts.length === 3 && parts[0] === 'nameserver' && /^[A-Za-z0-9_-]{1,32}$/.test(parts[1] ?? ''))) && /^([0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9a-fA-F:]+\]):[0-9]{1,5}$/.test(parts.at(-1) ?? '');
  if (!ok) throw new Error(`each item must be "nameserver <name> <ip>:<port>" or "<ip>:<port>"; got ${JSON.stringify(item)}`);
  return item;
}

/** `Name:len`, a header name (token characters) and a capture length 1..1024. */
function captureItem(item: string): string {
  if (!/^[A-Za-z0-9_-]{1,100}:[0-9]{1,4}$/.test(item) || Number(item.split(':')[1]) < 1 || Number(item.split(':')[1]) > 1024) {
    throw new Error(`each item must be Header-Name:length (length 1-1024), e.g. Host:15; got ${JSON.stringify(item)}`);
  }
  return item;
}

/** A log-format string: one config word once quoted, so no line breaks and no double quotes. */
function logFormat(env: Env, name: string): string | undefined {
  const raw = lookup(env, name);
  if (raw === undefined) return undefined;
  if (/[\r\n\0]/.test(raw)) throw new SettingsError(name, 'a log-format string may not contain line breaks');
  return raw;
}

function rawLine(name: string, line: string): string {
  if (/[\r\n\0]/.test(line)) throw new Error(`${name}: lines may not contain line breaks`);
  return line;
}

function oneOfValue<T extends string>(value: string, values: readonly T[]): T {
  if (!(values as readonly string[]).includes(value)) throw new Error(`must be one of ${values.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}

/** A file path that goes into haproxy.cfg: absolute after resolving, and no character HAProxy's parser reads. */
function filePath(env: Env, name: string): string | undefined {
  const raw = lookup(env, name);
  if (raw === undefined) return undefined;
  const resolved = path.resolve(raw);
  if (!/^[A-Za-z0-9/_.+-]+$/.test(resolved)) throw new SettingsError(name, `must be a path using letters, digits and / _ . + - (got ${JSON.stringify(raw)})`);
  return resolved;
}

const SSL_FLAGS = new Set(['no-sslv3', 'no-tlsv10', 'no-tlsv11', 'no-tlsv12', 'no-tlsv13', 'force-sslv3', 'force-tlsv10', 'force-tlsv11', 'force-tlsv12', 'force-tlsv13', 'no-tls-tickets', 'prefer-client-ciphers']);
const SSL_VERSIONS = new Set(['SSLv3', 'TLSv1.0', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3']);

/**
 * SSL_BIND_OPTIONS, word by word against what HAProxy 2.6's `ssl-default-bind-options` takes: an
 * unknown word would otherwise surface as HAProxy refusing the whole config at start-up, without
 * naming the variable.
 */
function sslBindOptions(env: Env): string | undefined {
  const raw = lookup(env, 'SSL_BIND_OPTIONS');
  if (raw === undefined) return undefined;
  const words = raw.split(' ');
  for (let i = 0; i < words.length; i++) {
    const word = words[i] ?? '';
    if (SSL_FLAGS.has(word)) continue;
    if ((word === 'ssl-min-ver' || word === 'ssl-max-ver') && SSL_VERSIONS.has(words[i + 1] ?? '')) {
      i++;
      continue;
    }
    throw new SettingsError(
      'SSL_BIND_OPTIONS',
      `must be HAProxy bind options separated by single spaces (${[...SSL_FLAGS].join(', ')}, ssl-min-ver/ssl-max-ver ${[...SSL_VERSIONS].join('|')}); ${JSON.stringify(word.slice(0, 60))} is not one`,
    );
  }
  return raw;
}

function matching(env: Env, name: string, re: RegExp, what: string): string | undefined {
  const raw = lookup(env, name);
  if (raw !== undefined && !re.test(raw)) throw new SettingsError(name, `must be ${what}; got ${JSON.stringify(raw)}`);
  return raw;
}

/**
 * The secret values among the settings (USERS and users-file passwords, the stats password): the
 * logger scrubs them from every line, whatever printed them (HAProxy's own output included).
 */
export function secretValues(settings: Settings): string[] {
  const password = (item: string) => item.slice(item.indexOf(':') + 1);
  return [
    ...settings.http.users.filter((u) => u.includes(':')).map(password),
    ...[...settings.http.userSecrets.values()].flat().filter((u) => u.includes(':')).map(password),
    ...(settings.stats?.auth ? [settings.stats.auth.pass] : []),
  ].filter((s) => s !== '');
}
