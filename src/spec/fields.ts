import { InvalidParamError } from '../errors.js';
import {
  checkBool,
  checkDomain,
  checkEnum,
  checkHeaderItem,
  checkHeaderMatch,
  checkHeaderName,
  checkInt,
  checkMethod,
  checkMime,
  checkName,
  checkPath,
  checkSearchReplace,
  checkUser,
  checkUserAgent,
  MAX_ITEMS,
  splitList,
} from './grammar.js';
import {
  COMPRESSION_ALGOS,
  CONNECTION_MODES,
  DOMAIN_ALGOS,
  PATH_TYPES,
  type PathType,
  REDIRECT_CODES,
} from './types.js';

/**
 * The one definition of every spec field. Parsing a request, reading and writing the stored JSON,
 * the response model, the legacy KV import and the docs table all come from this table, so a new
 * parameter touches this table, the renderer and a test.
 */

/** What a codec may look at: the list separator and the fields of the same level parsed before it. */
export interface FieldContext {
  readonly separator: string;
  readonly pathType: PathType;
}

/** The grammar of one field: from a request string, and from stored JSON (anyone with KV write could have put it there). */
export interface Codec<T> {
  /** Grammar, as the docs table shows it. */
  readonly grammar: string;
  parse(parameter: string, raw: string, ctx: FieldContext): T;
  check(parameter: string, stored: unknown, ctx: FieldContext): T;
}

/** One field: `T` is its value type; `E` its empty value (undefined: an optional field). */
export interface Field<K extends string, T, E extends T | undefined> {
  readonly name: K;
  readonly codec: Codec<T>;
  /** Value when absent; undefined leaves the field out of the spec. */
  readonly empty: E;
  /** The original's response / `config?type=json` name. */
  readonly response: string;
  /** What the response shows; secret fields show a redacted form. Default: the value itself. */
  readonly show?: (value: unknown) => unknown;
  readonly secret?: boolean;
  /** Key under `<instance>/<service>/` in the original's per-attribute KV layout. */
  readonly legacyKey?: string;
  /** Older parameter names read when this one is absent. */
  readonly aliases?: readonly string[];
  /**
   * Which destinations it applies to: http only (absent), `tcp` only, or `both`. A field set on a
   * destination it does not apply to is a 400 naming it (spec/modes.ts), never ignored.
   */
  readonly modes?: 'tcp' | 'both';
  readonly doc: string;
}

/** A field with its types erased, for code that handles every field alike. */
export type FieldDef = Field<string, unknown, unknown>;

/** Keeps the literal name and the value types of a table entry (the spec types derive from them). */
function field<const K extends string, T, const E extends T | undefined>(def: Field<K, T, E>): Field<K, T, E> {
  return def;
}

type ValueOf<F> = F extends Field<string, infer T, infer _E> ? T : never;
type NameIf<F, Optional extends boolean> = F extends Field<infer K, unknown, infer E> ? ((undefined extends E ? true : false) extends Optional ? K : never) : never;

/** The spec fields of a table: required where the field has an empty value, optional where it has none. */
export type FieldsOf<A extends readonly unknown[]> = { readonly [F in A[number] as NameIf<F, false>]: ValueOf<F> } & {
  readonly [F in A[number] as NameIf<F, true>]?: ValueOf<F>;
};

// --- codecs ------------------------------------------------------------------------------------

const name: Codec<string> = {
  grammar: 'name: `[A-Za-z0-9][A-Za-z0-9_.-]*`',
  parse: (p, raw) => checkName(p, raw),
  check: (p, v) => checkName(p, str(p, v)),
};

const bool: Codec<boolean> = {
  grammar: 'boolean: `true`/`false` (Go spellings `1 t T TRUE True 0 f F FALSE False`)',
  parse: (p, raw) => checkBool(p, raw),
  check: (p, v) => {
    if (typeof v !== 'boolean') throw new InvalidParamError(p, `${p} must be a boolean`);
    return v;
  },
};

function int(min: number, max: number, what = 'integer'): Codec<number> {
  return {
    grammar: `${what} ${min}–${max}`,
    parse: (p, raw) => checkInt(p, raw, min, max),
    check: (p, v) => {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new InvalidParamError(p, `${p} must be an integer between ${min} and ${max}`);
      return v;
    },
  };
}

function oneOf<T extends string | number>(values: readonly T[]): Codec<T> {
  const asText = values.map(String);
  return {
    grammar: `one of ${asText.map((v) => `\`${v}\``).join(', ')}`,
    parse: (p, raw) => values[asText.indexOf(checkEnum(p, raw, asText))] as T,
    check: (p, v) => {
      if (!(values as readonly unknown[]).includes(v)) throw new InvalidParamError(p, `${p} must be one of ${asText.join(', ')}`);
      return v as T;
    },
  };
}

/** A list split on SEPARATOR (or a fixed separator), each item through `item`; duplicates collapse. */
/** `discoveryType`: the original sent `DNS`; case does not matter. */
const discovery: Codec<'consul' | 'dns'> = {
  grammar: '`consul` or `dns` (any case)',
  parse: (p, raw) => checkEnum(p, raw.toLowerCase(), ['consul', 'dns'] as const),
  check: (p, v) => checkEnum(p, str(p, v), ['consul', 'dns'] as const),
};

/**
 * A DNS name to route to (no wildcard, no port): what `server-template` resolves. `_` is allowed:
 * Swarm names services `<stack>_<service>` and its DNS answers them.
 */
const dnsHost: Codec<string> = {
  grammar: 'host name: letters, digits, `-`, `_` and `.`',
  parse: (p, raw) => checkDnsHost(p, raw),
  check: (p, v) => checkDnsHost(p, str(p, v)),
};

const DNS_LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

export function checkDnsHost(parameter: string, value: string): string {
  const host = value.toLowerCase().replace(/\.$/, '');
  if (host.length === 0 || host.length > 253 || !host.split('.').every((label) => DNS_LABEL.test(label))) {
    throw new InvalidParamError(parameter, `${parameter} must be a host name without a wildcard or a port (letters, digits, '-', '_' and '.'; give the port as port); got ${JSON.stringify(value.slice(0, 100))}`);
  }
  return host;
}

function list(grammar: string, item: (p: string, s: string, ctx: FieldContext) => string, fixedSeparator?: string): Codec<readonly string[]> {
  return {
    grammar: `list of ${grammar}${fixedSeparator ? ` joined by \`${fixedSeparator}\`` : ''}`,
    parse: (p, raw, ctx) => [...new Set(splitList(p, raw, fixedSeparator ?? ctx.separator).map((s) => item(p, s, ctx)))],
    check: (p, v, ctx) => {
      if (!Array.isArray(v) || v.length > MAX_ITEMS) throw new InvalidParamError(p, `${p} must be a list of at most ${MAX_ITEMS} items`);
      return v.map((s) => item(p, str(p, s), ctx));
    },
  };
}

function str(p: string, v: unknown): string {
  if (typeof v !== 'string') throw new InvalidParamError(p, `${p} must be a string`);
  return v;
}

const paths = list('paths (grammar by `pathType`)', (p, s, ctx) => checkPath(p, s, ctx.pathType));

// --- the table ---------------------------------------------------------------------------------

const showUsers = (v: unknown) => (v as string[]).map((u) => ({ Username: u.split(':')[0] ?? '' }));
const showOptional = (v: unknown) => (v === undefined ? '' : String(v));

/** Service-level fields, in the order they are parsed and stored. */
export const SERVICE_FIELDS = [
  field({ name: 'aclName', codec: name, empty: undefined, response: 'AclName', modes: 'both', doc: 'Names the ACLs and backends and orders pattern rules; default `serviceName`.' }),
  field({
    name: 'serviceColor',
    codec: name,
    empty: undefined,
    modes: 'both',
    response: 'ServiceColor',
    show: showOptional,
    legacyKey: 'color',
    doc: 'Blue/green: instances come from the Consul service `<serviceName>-<serviceColor>`; names stay those of `serviceName`.',
  }),
  field({ name: 'skipCheck', codec: bool, empty: false, response: 'SkipCheck', legacyKey: 'skipcheck', modes: 'both', doc: 'No HAProxy health check on the servers (Consul still filters by health).' }),
  field({
    name: 'discoveryType',
    codec: discovery,
    empty: undefined,
    response: 'DiscoveryType',
    show: showOptional,
    modes: 'both',
    doc: 'Where instances come from: `consul` (the registry service `<serviceName>[-<serviceColor>]`) or `dns` (HAProxy resolves that same name on `port`, required, as Swarm and Kubernetes services are reached). Not given: Consul, unless `DISCOVERY=dns` and Consul does not know the service when it is reconfigured.',
  }),
  field({
    name: 'serviceDomainAlgo',
    codec: oneOf(DOMAIN_ALGOS),
    empty: undefined,
    response: 'ServiceDomainAlgo',
    show: showOptional,
    doc: 'How `serviceDomain` matches the Host: exact `hdr(host)`, prefix `hdr_beg(host)`, suffix `hdr_end(host)`, domain `hdr_dom(host)`; default `SERVICE_DOMAIN_ALGO`.',
  }),
  field({
    name: 'users',
    codec: list('`name[:password]`', checkUser),
    empty: [],
    response: 'Users',
    show: showUsers,
    secret: true,
    doc: 'Basic auth for this service. A user without a password takes it from `usersSecret`, else from `USERS`. Passwords are never shown.',
  }),
  field({ name: 'usersPassEncrypted', codec: bool, empty: false, response: 'UsersPassEncrypted', doc: 'Passwords in `users` are crypt(3) hashes.' }),
  field({ name: 'usersSecret', codec: name, empty: undefined, response: 'UsersSecret', show: showOptional, doc: 'Users from the file `dfp_users_<usersSecret>` in `SECRETS_DIR`.' }),
  field({
    name: 'addReqHeader',
    codec: list('`Name value`', checkHeaderItem),
    empty: [],
    response: 'AddReqHeader',
    aliases: ['addHeader'],
    doc: '`http-request add-header` rules; values may use HAProxy `%[...]` fetches (not `env()`).',
  }),
  field({ name: 'setReqHeader', codec: list('`Name value`', checkHeaderItem), empty: [], response: 'SetReqHeader', aliases: ['setHeader'], doc: '`http-request set-header` rules.' }),
  field({ name: 'delReqHeader', codec: list('header names', checkHeaderName), empty: [], response: 'DelReqHeader', doc: '`http-request del-header` rules.' }),
  field({ name: 'addResHeader', codec: list('`Name value`', checkHeaderItem), empty: [], response: 'AddResHeader', doc: '`http-response add-header` rules.' }),
  field({ name: 'setResHeader', codec: list('`Name value`', checkHeaderItem), empty: [], response: 'SetResHeader', doc: '`http-response set-header` rules.' }),
  field({ name: 'delResHeader', codec: list('header names', checkHeaderName), empty: [], response: 'DelResHeader', doc: '`http-response del-header` rules.' }),
  field({ name: 'isDefaultBackend', codec: bool, empty: false, response: 'IsDefaultBackend', doc: 'Requests no route matches go to this service instead of a 503.' }),
  field({ name: 'redirectWhenHttpProto', codec: bool, empty: false, response: 'RedirectWhenHttpProto', doc: 'Redirect to https when `X-Forwarded-Proto` is `http` (behind a TLS-terminating balancer).' }),
  field({ name: 'redirectUnlessHttpsProto', codec: bool, empty: false, response: 'RedirectUnlessHttpsProto', doc: 'Redirect to https unless `X-Forwarded-Proto` is `https`.' }),
  field({
    name: 'connectionMode',
    codec: oneOf(CONNECTION_MODES),
    empty: undefined,
    response: 'ConnectionMode',
    show: showOptional,
    doc: '`option <mode>` in the backend. `forceclose` and `http-tunnel` (gone from HAProxy 2.x) are refused.',
  }),
  field({ name: 'compressionAlgo', codec: list('of `identity`, `gzip`, `deflate`, `raw-deflate`', (p, s) => checkEnum(p, s, COMPRESSION_ALGOS)), empty: [], response: 'CompressionAlgo', doc: 'Per-service compression algorithms.' }),
  field({ name: 'compressionType', codec: list('MIME types', checkMime), empty: [], response: 'CompressionType', doc: 'MIME types to compress.' }),
  field({
    name: 'sessionType',
    codec: oneOf(['sticky-server'] as const),
    empty: undefined,
    response: 'SessionType',
    show: showOptional,
    doc: '`sticky-server`: a cookie keeps a client on one instance. Instance changes of such a service reload HAProxy.',
  }),
] as const;

/** Per-destination fields (each may carry `.N`), in the order they are parsed: pathType before the paths. */
export const DEST_FIELDS = [
  field({ name: 'pathType', codec: oneOf(PATH_TYPES), empty: 'path_beg', response: 'PathType', legacyKey: 'pathtype', doc: 'How `servicePath` matches: `path_beg` (prefix, default), `path` (exact), or an ACL fetch.' }),
  field({ name: 'servicePath', codec: paths, empty: [], response: 'ServicePath', legacyKey: 'path', doc: 'Paths routed to the service. Default `/` when only `serviceDomain` is given.' }),
  field({ name: 'servicePathExclude', codec: paths, empty: [], response: 'ServicePathExclude', doc: 'Paths (same `pathType`) excluded from this destination.' }),
  field({
    name: 'port',
    codec: int(1, 65535, 'port'),
    empty: undefined,
    modes: 'both',
    response: 'Port',
    show: showOptional,
    legacyKey: 'port',
    doc: "The service's internal port. Optional: server lines use Consul's address and port; it names the backend.",
  }),
  field({
    name: 'srcPort',
    codec: int(1, 65535, 'port'),
    empty: undefined,
    modes: 'both',
    response: 'SrcPort',
    show: (v) => v ?? 0,
    doc: 'Entry port: this destination answers only there. http: one of `DEFAULT_PORTS` or `BIND_PORTS` (400 otherwise); with `httpsPort`, default the first plain port of `DEFAULT_PORTS` (80). tcp and sni: required, not an HTTP listener, `PORT` or `STATS_PORT`; a tcp service has it to itself, sni services share it by server name.',
  }),
  field({
    name: 'httpsPort',
    codec: int(1, 65535, 'port'),
    empty: undefined,
    response: 'HttpsPort',
    show: (v) => v ?? 0,
    doc: "A second backend, `https-<aclName>-be<httpsPort>_<index>`, for this destination's requests that arrive on `srcHttpsPort`; the first then answers on `srcPort` only. Same routes, settings and Consul instances (as the original's Consul mode); it names the backend.",
  }),
  field({
    name: 'srcHttpsPort',
    codec: int(1, 65535, 'port'),
    empty: undefined,
    response: 'SrcHttpsPort',
    show: (v) => v ?? 0,
    doc: 'Entry port of the `httpsPort` backend (400 without `httpsPort`). Default: the first TLS port of `DEFAULT_PORTS` (443). Must be a port HAProxy listens on.',
  }),
  field({
    name: 'serviceDomain',
    codec: list('hosts (`a.com`, `*.a.com`)', checkDomain),
    empty: [],
    response: 'ServiceDomain',
    legacyKey: 'domain',
    doc: 'Hosts this destination answers for (lower-cased; a port is ignored). `*.a.com` matches every sub-domain. With `reqMode=sni`: the TLS server names routed to it.',
  }),
  field({ name: 'redirectFromDomain', codec: list('hosts', checkDomain), empty: [], response: 'RedirectFromDomain', doc: 'Hosts answered with a 301 to the first `serviceDomain`, path kept.' }),
  field({ name: 'serviceHeader', codec: list('`Name:Value`', checkHeaderMatch), empty: [], response: 'ServiceHeader', doc: 'The destination matches only requests carrying every one of these headers.' }),
  field({ name: 'userAgent', codec: list('User-Agent substrings', checkUserAgent), empty: [], response: 'UserAgent', doc: 'The destination matches only these User-Agents (substring, case-insensitive).' }),
  field({ name: 'allowedMethods', codec: list('HTTP methods', checkMethod), empty: [], response: 'AllowedMethods', doc: 'Other methods answer 403.' }),
  field({ name: 'deniedMethods', codec: list('HTTP methods', checkMethod), empty: [], response: 'DeniedMethods', doc: 'These methods answer 403.' }),
  field({ name: 'denyHttp', codec: bool, empty: false, response: 'DenyHttp', doc: 'Plain-HTTP requests answer 403.' }),
  field({ name: 'httpsOnly', codec: bool, empty: false, response: 'HttpsOnly', doc: 'Plain HTTP is redirected to https. Un-indexed `true` (or `HTTPS_ONLY`) applies to every destination.' }),
  field({ name: 'httpsRedirectCode', codec: oneOf(REDIRECT_CODES), empty: undefined, response: 'HttpsRedirectCode', show: showOptional, doc: 'Status of the `httpsOnly` redirect (default 302).' }),
  field({ name: 'ignoreAuthorization', codec: bool, empty: false, response: 'IgnoreAuthorization', doc: 'No basic auth for this destination.' }),
  field({
    name: 'reqPathSearchReplace',
    codec: list('`search,replace` pairs', checkSearchReplace, ':'),
    empty: [],
    response: 'ReqPathSearchReplace',
    doc: 'Path rewrites `http-request set-path %[path,regsub(search,replace)]`; pairs joined by `:`. Legacy `reqPathSearch`/`reqPathReplace` give the first pair.',
  }),
  field({ name: 'sslVerifyNone', codec: bool, empty: false, response: 'SslVerifyNone', modes: 'both', doc: 'TLS to the instances, without verifying their certificates.' }),
  field({ name: 'timeoutServer', codec: int(0, 86400, 'seconds'), empty: undefined, response: 'TimeoutServer', show: showOptional, modes: 'both', doc: '`timeout server` of this backend, seconds.' }),
  field({ name: 'timeoutTunnel', codec: int(0, 86400, 'seconds'), empty: undefined, response: 'TimeoutTunnel', show: showOptional, modes: 'both', doc: '`timeout tunnel` (WebSockets) of this backend, seconds.' }),
  field({
    name: 'outboundHostname',
    codec: dnsHost,
    empty: undefined,
    response: 'OutboundHostname',
    show: showOptional,
    legacyKey: 'hostname',
    modes: 'both',
    doc: 'Route to this DNS name (on `port`, required) instead of Consul instances: HAProxy resolves it at run time and follows its A records (`server-template`, `RESOLVERS`); a name that does not resolve answers 503 and breaks no other route.',
  }),
  field({ name: 'timeoutClient', codec: int(0, 86400, 'seconds'), empty: undefined, response: 'TimeoutClient', show: showOptional, modes: 'tcp', doc: 'tcp only: `timeout client` of its frontend, seconds (default `TIMEOUT_CLIENT`); an established connection idles out on the tunnel timeout instead (`timeoutTunnel`).' }),
  field({ name: 'checkTcp', codec: bool, empty: false, response: 'CheckTcp', modes: 'tcp', doc: 'tcp only: `option tcp-check` on the backend (a connect check is the default).' }),
  field({ name: 'clitcpka', codec: bool, empty: false, response: 'Clitcpka', modes: 'tcp', doc: 'tcp only: TCP keep-alive towards clients (`option clitcpka`).' }),
  field({ name: 'verifyClientSsl', codec: bool, empty: false, response: 'VerifyClientSsl', doc: 'With `CA_FILE`: 403 unless the client presented a certificate that verifies. 400 without `CA_FILE`.' }),
] as const;

/** Parameters of the original whose meaning this version does not implement: refused by name. */
export const NOT_YET = new Set([
  'serviceGroup',
  'balanceGroup',
  'serviceDomainMatchAll',
]);

/** Raw HAProxy configuration from a request: never accepted (config injection by design). */
export const RAW_CONFIG = new Set(['templateFePath', 'templateBePath', 'consulTemplateFePath', 'consulTemplateBePath', 'backendExtra']);

export const DEST_FIELD_NAMES: ReadonlySet<string> = new Set([...DEST_FIELDS.map((f) => f.name), 'reqMode']);

export function fieldContext(separator: string, pathType: PathType = 'path_beg'): FieldContext {
  return { separator, pathType };
}


/** Legacy KV keys of parameters that are not spec fields (refused or handled apart when imported). */
const LEGACY_OTHER: Readonly<Record<string, string>> = {
  consultemplatefepath: 'consulTemplateFePath',
  consultemplatebepath: 'consulTemplateBePath',
  cert: 'serviceCert',
};

/** The original's per-attribute KV values of one service as request parameters, from the table. */
export function legacyParams(serviceName: string, attrs: ReadonlyMap<string, string>): [string, string][] {
  const pairs: [string, string][] = [['serviceName', serviceName]];
  for (const field of [...SERVICE_FIELDS, ...DEST_FIELDS]) {
    if (field.legacyKey !== undefined) pairs.push([field.name, attrs.get(field.legacyKey) ?? '']);
  }
  for (const [key, param] of Object.entries(LEGACY_OTHER)) pairs.push([param, attrs.get(key) ?? '']);
  return pairs;
}

function defaultText(field: FieldDef): string {
  if (field.empty === undefined) return '–';
  if (Array.isArray(field.empty)) return field.empty.length === 0 ? '–' : field.empty.join(',');
  return `\`${String(field.empty)}\``;
}

/** The docs table of one level, generated from the field table (docs/api.md embeds it; a test keeps it in sync). */
export function fieldsTable(level: 'service' | 'destination'): string {
  const fields: readonly FieldDef[] = level === 'service' ? SERVICE_FIELDS : DEST_FIELDS;
  const rows = fields.map((f) => {
    const names = [f.name, ...(f.aliases ?? []).map((a) => `${a} (old name)`)].map((n) => `\`${n}\``).join(', ');
    const extra = [f.secret ? 'Secret: never shown.' : '', f.legacyKey ? `Legacy KV key \`${f.legacyKey}\`.` : ''].filter((x) => x !== '').join(' ');
    return `| ${names} | ${defaultText(f)} | ${f.codec.grammar} | \`${f.response}\` | ${f.doc}${extra ? ` ${extra}` : ''} |`;
  });
  return ['| Parameter | Default | Grammar | Response field | Meaning |', '|---|---|---|---|---|', ...rows].join('\n');
}
