import type { Instance } from '../discovery/types.js';
import { backendName, type Destination, dnsTarget, type ServiceSpec } from '../spec/types.js';
import { slotName } from './slots.js';

/**
 * Backends as structs: mode, option lines and server slots. Everything but the slots' addresses is
 * the backend's skeleton; two configs whose skeletons are equal differ only in what the runtime API
 * can change, and a dry run can name the backend whose lines forced a reload.
 */

/** One config-defined server of a backend (render/slots.ts): free, or pointed at an instance. */
export interface Slot {
  readonly name: string;
  readonly instance?: Instance | undefined;
}

export interface Backend {
  readonly name: string;
  /** Every line of the section but the server lines, in order. */
  readonly lines: readonly string[];
  readonly slots: readonly Slot[];
  /** Keywords on every server line (`check`, `ssl verify none`, `cookie <slot>`): part of the skeleton. */
  readonly serverOptions: (slot: string) => string;
}

export function serverAddress(instance: Pick<Instance, 'address' | 'port'>): string {
  return instance.address.includes(':') ? `ipv6@${instance.address}:${instance.port}` : `${instance.address}:${instance.port}`;
}

/** A value written as one double-quoted config word: HAProxy's escapes for `"`, `\` and `$`. */
export function quote(value: string): string {
  return `"${value.replace(/[\\"$]/g, (c) => `\\${c}`)}"`;
}

/** The backend of one destination of a service. */
/** `userlist`: the userlist that protects the service (its own, the global one), or none. */
export function buildBackend(spec: ServiceSpec, dest: Destination, slots: readonly Slot[], userlist: string | undefined, name = backendName(spec, dest)): Backend {
  const built = dest.reqMode !== 'http' ? tcpBackend(spec, dest, slots, name) : httpBackend(spec, dest, slots, userlist, name);
  const host = dnsTarget(spec, dest);
  if (host === undefined) return built;
  // A DNS target: HAProxy resolves the name at run time and fills the servers from its A records;
  // `init-addr none` lets it start, and keep every other route, while the name does not resolve.
  const check = spec.skipCheck ? '' : ' check';
  const template = `server-template s 1-${Math.max(1, slots.length)} ${host}:${dest.port} resolvers ${DNS_RESOLVERS} resolve-prefer ipv4 init-addr none${check}${dest.sslVerifyNone ? ' ssl verify none' : ''}`;
  return { ...built, lines: [...built.lines, template], slots: [] };
}

/** The `resolvers` section DNS targets use (render/haproxy-config.ts renders it). */
export const DNS_RESOLVERS = 'dfp';

function httpBackend(spec: ServiceSpec, dest: Destination, slots: readonly Slot[], userlist: string | undefined, name: string): Backend {
  const lines = ['mode http'];
  const sticky = spec.sessionType === 'sticky-server';
  if (sticky) lines.push(`cookie ${spec.aclName} insert indirect nocache`);
  if (spec.connectionMode) lines.push(`option ${spec.connectionMode}`);
  if (dest.timeoutServer !== undefined) lines.push(`timeout server ${dest.timeoutServer}s`);
  if (dest.timeoutTunnel !== undefined) lines.push(`timeout tunnel ${dest.timeoutTunnel}s`);
  if (spec.compressionAlgo.length > 0) lines.push(`compression algo ${spec.compressionAlgo.join(' ')}`);
  if (spec.compressionType.length > 0) lines.push(`compression type ${spec.compressionType.join(' ')}`);
  // Method rules first: a denied request never reaches auth or the instances.
  if (dest.allowedMethods.length > 0) lines.push(`http-request deny deny_status 403 unless { method ${dest.allowedMethods.join(' ')} }`);
  if (dest.deniedMethods.length > 0) lines.push(`http-request deny deny_status 403 if { method ${dest.deniedMethods.join(' ')} }`);
  const checkedBy = dest.ignoreAuthorization ? undefined : userlist;
  if (checkedBy !== undefined) {
    lines.push(`http-request auth realm ${quote(spec.serviceName)} unless { http_auth(${checkedBy}) }`);
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
  // Server keywords are part of the skeleton (the runtime API cannot switch TLS or checks on a
  // server): changing them reloads. A sticky cookie names the slot, so it survives reloads.
  const serverOptions = (slot: string) => `${spec.skipCheck ? '' : ' check'}${dest.sslVerifyNone ? ' ssl verify none' : ''}${sticky ? ` cookie ${slot}` : ''}`;
  return { name, lines, slots, serverOptions };
}

/** A reqMode=tcp destination's backend: bytes in, bytes out; a connect check unless checkTcp asks for tcp-check. */
function tcpBackend(spec: ServiceSpec, dest: Destination, slots: readonly Slot[], name: string): Backend {
  const lines = ['mode tcp'];
  if (dest.timeoutServer !== undefined) lines.push(`timeout server ${dest.timeoutServer}s`);
  if (dest.timeoutTunnel !== undefined) lines.push(`timeout tunnel ${dest.timeoutTunnel}s`);
  if (dest.checkTcp) lines.push('option tcp-check');
  const serverOptions = () => `${spec.skipCheck ? '' : ' check'}${dest.sslVerifyNone ? ' ssl verify none' : ''}`;
  return { name, lines, slots, serverOptions };
}

function headerRule(rule: string, item: string): string {
  const i = item.indexOf(' ');
  return `${rule} ${item.slice(0, i)} ${quote(item.slice(i + 1))}`;
}

/** A spare backend, ready for a service added at run time: it looks like a plain service's backend. */
export function spareBackend(name: string, slots: number, checks = true): Backend {
  const key = `${name} ${slots} ${checks}`;
  let spare = spares.get(key);
  if (spare === undefined) {
    const options = checks ? ' check' : '';
    spare = { name, lines: ['mode http'], slots: Array.from({ length: slots }, (_, i) => ({ name: slotName(i) })), serverOptions: () => options };
    // Thousands of spares at 10,000 services: the same object each render, so plans skip them.
    if (spares.size > 100_000) spares.clear();
    spares.set(key, spare);
  }
  return spare;
}

const spares = new Map<string, Backend>();

/**
 * The section's text. In the skeleton (`withAddresses` false) every slot reads `<slot>`: the
 * skeletons of two configs are equal when they differ only in what the runtime API can change.
 */
export function renderBackend(b: Backend, withAddresses: boolean): string[] {
  const out = ['', `backend ${b.name}`, ...b.lines.map((l) => `    ${l}`)];
  for (const s of b.slots) {
    if (!withAddresses) out.push(`    server ${s.name} <slot>${b.serverOptions(s.name)}`);
    else if (!s.instance) out.push(`    server ${s.name} 0.0.0.0:0 disabled${b.serverOptions(s.name)}`);
    // The registry ID as a comment: HAProxy's stats name the slot, the config says who holds it.
    // IDs are printable ASCII without spaces (discovery checks), and nothing ends a comment but a newline.
    else out.push(`    server ${s.name} ${serverAddress(s.instance)}${b.serverOptions(s.name)}  # ${s.instance.id}`);
  }
  return out;
}
