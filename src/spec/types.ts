/**
 * The desired state of one service: what a reconfigure request asked for, validated and typed.
 * Everything in a ServiceSpec has passed the grammar in spec/grammar.ts, so the renderer may
 * write it into haproxy.cfg as is. Specs are plain JSON (they are persisted and compared).
 *
 * Each field is defined once, in spec/fields.ts: its parameter name, grammar, default, response
 * name, legacy KV key and whether it is secret. Parsing, stored JSON, the response model, the legacy
 * import and the docs table are derived from that table.
 */

export const PATH_TYPES = ['path', 'path_beg', 'path_dir', 'path_dom', 'path_end', 'path_len', 'path_reg', 'path_sub'] as const;
export type PathType = (typeof PATH_TYPES)[number];

export const REQ_MODES = ['http', 'tcp', 'sni'] as const;
export type ReqMode = (typeof REQ_MODES)[number];

/** How a serviceDomain matches the Host header (the original's `serviceDomainAlgo`). */
export const DOMAIN_ALGOS = ['hdr(host)', 'hdr_beg(host)', 'hdr_end(host)', 'hdr_dom(host)'] as const;
export type DomainAlgo = (typeof DOMAIN_ALGOS)[number];

export const CONNECTION_MODES = ['http-keep-alive', 'http-server-close', 'httpclose'] as const;
export type ConnectionMode = (typeof CONNECTION_MODES)[number];

export const COMPRESSION_ALGOS = ['identity', 'gzip', 'deflate', 'raw-deflate'] as const;
export type CompressionAlgo = (typeof COMPRESSION_ALGOS)[number];

export const REDIRECT_CODES = [301, 302, 303, 307, 308] as const;

export interface Destination {
  /** 0 for the un-indexed destination, 1..10 for `param.N`. Appears in ACL and backend names. */
  readonly index: number;
  readonly reqMode: 'http';
  readonly servicePath: readonly string[];
  readonly pathType: PathType;
  readonly servicePathExclude: readonly string[];
  /** The service's internal port. Optional with Consul: server lines use Consul's port. */
  readonly port?: number;
  /** Entry port: the route answers only on this HAProxy port (must be bound). */
  readonly srcPort?: number;
  /** Hosts, lower case; `*.a.com` is a wildcard. Empty: any host. */
  readonly serviceDomain: readonly string[];
  readonly redirectFromDomain: readonly string[];
  /** `Name:Value` items: the route needs every header. */
  readonly serviceHeader: readonly string[];
  readonly userAgent: readonly string[];
  readonly allowedMethods: readonly string[];
  readonly deniedMethods: readonly string[];
  readonly denyHttp: boolean;
  readonly httpsOnly: boolean;
  readonly httpsRedirectCode?: number;
  readonly ignoreAuthorization: boolean;
  /** `search,replace` items. */
  readonly reqPathSearchReplace: readonly string[];
  readonly sslVerifyNone: boolean;
  readonly timeoutServer?: number;
  readonly timeoutTunnel?: number;
  readonly verifyClientSsl: boolean;
}

export interface ServiceSpec {
  readonly serviceName: string;
  /** Names ACLs and backends and orders rules; defaults to serviceName. */
  readonly aclName: string;
  /** Blue/green: instances are looked up as `<serviceName>-<serviceColor>`. */
  readonly serviceColor?: string;
  /** Omit ` check` on server lines. */
  readonly skipCheck: boolean;
  readonly serviceDomainAlgo?: DomainAlgo;
  /** `name:password` items (password optional: then from usersSecret or USERS). Secret. */
  readonly users: readonly string[];
  readonly usersPassEncrypted: boolean;
  readonly usersSecret?: string;
  /** `Name value` items. */
  readonly addReqHeader: readonly string[];
  readonly setReqHeader: readonly string[];
  readonly delReqHeader: readonly string[];
  readonly addResHeader: readonly string[];
  readonly setResHeader: readonly string[];
  readonly delResHeader: readonly string[];
  readonly isDefaultBackend: boolean;
  readonly redirectWhenHttpProto: boolean;
  readonly redirectUnlessHttpsProto: boolean;
  readonly connectionMode?: ConnectionMode;
  readonly compressionAlgo: readonly string[];
  readonly compressionType: readonly string[];
  readonly sessionType?: 'sticky-server';
  readonly destinations: readonly Destination[];
}

/** The Consul service whose instances back this spec. */
export function consulServiceName(spec: Pick<ServiceSpec, 'serviceName' | 'serviceColor'>): string {
  return spec.serviceColor ? `${spec.serviceName}-${spec.serviceColor}` : spec.serviceName;
}

/**
 * HAProxy backend name, following the original's `<aclName>-be<port>_<index>` pattern. Unique by
 * construction: reading from the right, `_<index>` ends it and the last `-be<digits>` before that is
 * ours (a port has no `-be`), so two (aclName, port, index) triples never share a name. Every other
 * generated name (ACLs, userlists) is derived from it.
 */
export function backendName(spec: Pick<ServiceSpec, 'aclName'>, dest: Pick<Destination, 'port' | 'index'>): string {
  return `${spec.aclName}-be${dest.port ?? ''}_${dest.index}`;
}
