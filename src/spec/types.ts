/**
 * The desired state of one service: what a reconfigure request asked for, validated and typed.
 * Everything in a ServiceSpec has passed the grammar in spec/grammar.ts, so the renderer may
 * write it into haproxy.cfg as is. Specs are plain JSON (they are persisted and compared).
 *
 * Each field is defined once, in spec/fields.ts: its parameter name, grammar and value type,
 * default, response name, legacy KV key and whether it is secret. These types, parsing, stored JSON,
 * the response model, the legacy import and the docs table are derived from that table.
 */

import type { DEST_FIELDS, FieldsOf, SERVICE_FIELDS } from './fields.js';

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

/**
 * One destination of a service (`param.N`): its fields are those of DEST_FIELDS, typed from the
 * table. `index` is 0 for the un-indexed destination, 1..10 for `param.N`; it appears in names.
 */
export type Destination = {
  readonly index: number;
  readonly reqMode: 'http' | 'tcp' | 'sni';
  /** Set on the second destination routedSpec makes of one with `httpsPort`: its backend is `https-…`. */
  readonly https?: true;
} & FieldsOf<typeof DEST_FIELDS>;

/** A service: SERVICE_FIELDS typed from the table, with aclName always filled (default serviceName). */
export type ServiceSpec = { readonly serviceName: string; readonly aclName: string; readonly destinations: readonly Destination[] } & Omit<
  FieldsOf<typeof SERVICE_FIELDS>,
  'aclName'
>;

/** The Consul service whose instances back this spec. */
export function consulServiceName(spec: Pick<ServiceSpec, 'serviceName' | 'serviceColor'>): string {
  return spec.serviceColor ? `${spec.serviceName}-${spec.serviceColor}` : spec.serviceName;
}

/**
 * The DNS name a destination routes to (HAProxy resolves it at run time), or undefined when its
 * instances come from Consul: `outboundHostname`, else with `discoveryType=dns` the registry name.
 */
export function dnsTarget(spec: Pick<ServiceSpec, 'serviceName' | 'serviceColor' | 'discoveryType'>, dest: Pick<Destination, 'outboundHostname'>): string | undefined {
  return dest.outboundHostname ?? (spec.discoveryType === 'dns' ? consulServiceName(spec).toLowerCase() : undefined);
}

/**
 * HAProxy backend name, following the original's `<aclName>-be<port>_<index>` pattern, and
 * `https-<aclName>-be<httpsPort>_<index>` for the second backend of a destination with httpsPort.
 * Reading from the right, `_<index>` ends it and the last `-be<digits>` before that is ours (a port
 * has no `-be`), so two (aclName, port, index) triples never share a name; the `https-` prefix can
 * (aclName `https-web` vs `web` with httpsPort), and withService (state/desired-state.ts) refuses
 * that collision with a 400 naming aclName. Every other generated name (ACLs, userlists) is
 * derived from it.
 */
export function backendName(spec: Pick<ServiceSpec, 'aclName'>, dest: Pick<Destination, 'port' | 'index' | 'https'>): string {
  return `${dest.https ? 'https-' : ''}${spec.aclName}-be${dest.port ?? ''}_${dest.index}`;
}

const routedMemo = new WeakMap<ServiceSpec, ServiceSpec>();

/**
 * The spec as it is routed: a destination with `httpsPort` becomes two, the original's pair of
 * backends. The first answers on `srcPort` (parse.ts defaults it); the second, `https-<aclName>-
 * be<httpsPort>_<index>`, answers on `srcHttpsPort` with the same settings and the same instances.
 * Memoised (specs are immutable), so the renderer's per-spec memo keeps working; a spec without
 * `httpsPort` is returned as is.
 */
export function routedSpec(spec: ServiceSpec): ServiceSpec {
  if (!spec.destinations.some((d) => d.httpsPort !== undefined)) return spec;
  let routed = routedMemo.get(spec);
  if (routed === undefined) {
    const destinations = spec.destinations.flatMap((d): Destination[] => {
      if (d.httpsPort === undefined) return [d];
      const { httpsPort, srcHttpsPort, ...plain } = d;
      return [plain as Destination, { ...plain, port: httpsPort, srcPort: srcHttpsPort, https: true } as Destination];
    });
    routed = { ...spec, destinations };
    routedMemo.set(spec, routed);
  }
  return routed;
}
