import { createHash } from 'node:crypto';
import type { Instance } from '../discovery/types.js';
import { backendName, type Destination, type ServiceSpec } from '../spec/types.js';

/**
 * Backends as structs: mode, option lines and servers. Everything but the servers is the backend's
 * skeleton; two configs whose skeletons are equal differ only in what the runtime API can change,
 * and a dry run can name the backend whose lines forced a reload.
 */

export interface RenderedServer {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly check: boolean;
}

export interface Backend {
  readonly name: string;
  /** Every line of the section but the server lines, in order. */
  readonly lines: readonly string[];
  readonly servers: readonly RenderedServer[];
  /** Extra keywords on every server line (`ssl verify none`, `cookie <name>`). */
  readonly serverOptions: (server: RenderedServer) => string;
  /** Servers carry cookies: HAProxy 2.6 cannot add such servers at run time, so changes reload. */
  readonly sticky: boolean;
}

export interface BackendContext {
  /** Userlist names: the service's own, or the global one, or none. */
  readonly userlist: (spec: ServiceSpec) => string | undefined;
}

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

/** A value written as one double-quoted config word: HAProxy's escapes for `"`, `\` and `$`. */
export function quote(value: string): string {
  return `"${value.replace(/[\\"$]/g, (c) => `\\${c}`)}"`;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function serversOf(spec: ServiceSpec, instances: readonly Instance[]): RenderedServer[] {
  return [...instances]
    .sort((a, b) => cmp(a.id, b.id))
    .map((inst) => ({ name: serverName(inst), address: inst.address, port: inst.port, check: !spec.skipCheck }));
}

/** The backend of one destination of a service. */
export function buildBackend(spec: ServiceSpec, dest: Destination, servers: readonly RenderedServer[], ctx: BackendContext, name = backendName(spec, dest)): Backend {
  const lines = ['mode http'];
  const sticky = spec.sessionType === 'sticky-server';
  if (sticky) lines.push(`cookie ${spec.aclName} insert indirect nocache`);
  // TLS to the instances is part of the skeleton: the runtime API cannot switch it on an existing
  // server, so turning sslVerifyNone on or off must reload. The server lines repeat it, because a
  // server added at run time takes its options from its own command.
  if (dest.sslVerifyNone) lines.push('default-server ssl verify none');
  if (spec.connectionMode) lines.push(`option ${spec.connectionMode}`);
  if (dest.timeoutServer !== undefined) lines.push(`timeout server ${dest.timeoutServer}s`);
  if (dest.timeoutTunnel !== undefined) lines.push(`timeout tunnel ${dest.timeoutTunnel}s`);
  if (spec.compressionAlgo.length > 0) lines.push(`compression algo ${spec.compressionAlgo.join(' ')}`);
  if (spec.compressionType.length > 0) lines.push(`compression type ${spec.compressionType.join(' ')}`);
  // Method rules first: a denied request never reaches auth or the instances.
  if (dest.allowedMethods.length > 0) lines.push(`http-request deny deny_status 403 unless { method ${dest.allowedMethods.join(' ')} }`);
  if (dest.deniedMethods.length > 0) lines.push(`http-request deny deny_status 403 if { method ${dest.deniedMethods.join(' ')} }`);
  const userlist = dest.ignoreAuthorization ? undefined : ctx.userlist(spec);
  if (userlist !== undefined) {
    lines.push(`http-request auth realm ${quote(spec.serviceName)} unless { http_auth(${userlist}) }`);
    // The instances never see the credentials.
    lines.push('http-request del-header Authorization');
  }
  for (const pair of dest.reqPathSearchReplace) {
    const i = pair.indexOf(',');
    // Single-quoted word (no escapes, no env expansion at the config level) around double-quoted
    // converter arguments, so regex parentheses and commas stay inside them. The grammar allows
    // neither kind of quote in the values.
    lines.push(`http-request set-path '%[path,regsub("${pair.slice(0, i)}","${pair.slice(i + 1)}")]'`);
  }
  for (const item of spec.delReqHeader) lines.push(`http-request del-header ${item}`);
  for (const item of spec.setReqHeader) lines.push(headerRule('http-request set-header', item));
  for (const item of spec.addReqHeader) lines.push(headerRule('http-request add-header', item));
  for (const item of spec.delResHeader) lines.push(`http-response del-header ${item}`);
  for (const item of spec.setResHeader) lines.push(headerRule('http-response set-header', item));
  for (const item of spec.addResHeader) lines.push(headerRule('http-response add-header', item));
  const serverOptions = (s: RenderedServer) =>
    `${s.check ? ' check' : ''}${dest.sslVerifyNone ? ' ssl verify none' : ''}${sticky ? ` cookie ${s.name}` : ''}`;
  return { name, lines, servers, serverOptions, sticky };
}

function headerRule(rule: string, item: string): string {
  const i = item.indexOf(' ');
  return `${rule} ${item.slice(0, i)} ${quote(item.slice(i + 1))}`;
}

export function renderBackend(b: Backend, withServers: boolean): string[] {
  const out = ['', `backend ${b.name}`, ...b.lines.map((l) => `    ${l}`)];
  if (withServers) for (const s of b.servers) out.push(`    server ${s.name} ${serverAddress(s)}${b.serverOptions(s)}`);
  return out;
}
