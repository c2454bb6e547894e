import type { Instance } from '../discovery/types.js';
import { InvalidParamError } from '../errors.js';
import type { ServiceState } from './service-state.js';
import { backendName, consulServiceName, type Destination, routedSpec, type ServiceSpec } from '../spec/types.js';

/**
 * The desired state: every configured service and the last known instances of each Consul
 * service they use. Immutable; every change produces a new value, so an apply that fails leaves
 * the previous state untouched.
 */
export interface DesiredState {
  readonly services: ReadonlyMap<string, ServiceSpec>;
  /** Keyed by Consul service name (`serviceName` or `serviceName-serviceColor`). */
  readonly instances: ReadonlyMap<string, readonly Instance[]>;
}

export const EMPTY_STATE: DesiredState = { services: new Map(), instances: new Map() };

/** Adds or replaces a service. Refuses names that would collide with another service's backends. */
export function withService(state: DesiredState, spec: ServiceSpec, instances: readonly Instance[]): DesiredState {
  const mineByPort = new Map<number, Destination[]>();
  for (const d of spec.destinations) {
    if (d.reqMode === 'http' || d.srcPort === undefined) continue;
    for (const other of mineByPort.get(d.srcPort) ?? []) checkPortShare(d, other, `another destination of ${spec.serviceName}`);
    mineByPort.set(d.srcPort, [...(mineByPort.get(d.srcPort) ?? []), d]);
  }
  // Looked up in the index of the others' names and ports: a change costs the same at 10 services and at 10,000.
  const index = indexOf(state.services);
  const owner = index.byAcl.get(spec.aclName);
  if (owner !== undefined && owner !== spec.serviceName) {
    throw new InvalidParamError('aclName', `aclName ${spec.aclName} is already used by service ${owner}`);
  }
  for (const [port, mine] of mineByPort) {
    for (const theirs of index.tcpPorts.get(port) ?? []) {
      if (theirs.serviceName === spec.serviceName) continue;
      for (const m of mine) checkPortShare(m, theirs.dest, `service ${theirs.serviceName}`);
    }
  }
  // Backend names are `[https-]<aclName>-be…`: two aclNames can still give one name (`https-web` and `web` with httpsPort).
  for (const name of backendNames(spec)) {
    const taken = index.backends.get(name);
    if (taken !== undefined && taken !== spec.serviceName) {
      throw new InvalidParamError('aclName', `backend ${name} already belongs to service ${taken}; choose another aclName`);
    }
  }
  const services = new Map(state.services);
  const replaced = services.get(spec.serviceName);
  services.set(spec.serviceName, spec);
  indexes.set(services, withIndexed(replaced === undefined ? index : withoutIndexed(index, replaced), spec));
  const byConsul = new Map(state.instances);
  byConsul.set(consulServiceName(spec), instances);
  // Only a replaced spec that used another Consul service can leave an instance list unused.
  const next = { services, instances: byConsul };
  return replaced !== undefined && consulServiceName(replaced) !== consulServiceName(spec) ? prune(next) : next;
}

/** What withService checks a new spec against: who holds each aclName, TCP-level port and backend name. */
interface NameIndex {
  readonly byAcl: ReadonlyMap<string, string>;
  readonly tcpPorts: ReadonlyMap<number, readonly { readonly serviceName: string; readonly dest: Destination }[]>;
  readonly backends: ReadonlyMap<string, string>;
}

/** Per map of specs (immutable): built once, then carried from one state to the next a spec at a time. */
const indexes = new WeakMap<ReadonlyMap<string, ServiceSpec>, NameIndex>();

function indexOf(services: ReadonlyMap<string, ServiceSpec>): NameIndex {
  let index = indexes.get(services);
  if (index === undefined) {
    index = { byAcl: new Map(), tcpPorts: new Map(), backends: new Map() };
    for (const spec of services.values()) index = withIndexed(index, spec, true);
    indexes.set(services, index);
  }
  return index;
}

function backendNames(spec: ServiceSpec): string[] {
  return routedSpec(spec).destinations.map((d) => backendName(spec, d));
}

/** The index with a spec's names added; `inPlace` while building a fresh index nobody else holds. */
function withIndexed(index: NameIndex, spec: ServiceSpec, inPlace = false): NameIndex {
  const byAcl = (inPlace ? index.byAcl : new Map(index.byAcl)) as Map<string, string>;
  const tcpPorts = (inPlace ? index.tcpPorts : new Map(index.tcpPorts)) as Map<number, { serviceName: string; dest: Destination }[]>;
  const backends = (inPlace ? index.backends : new Map(index.backends)) as Map<string, string>;
  byAcl.set(spec.aclName, spec.serviceName);
  for (const dest of spec.destinations) {
    if (dest.reqMode === 'http' || dest.srcPort === undefined) continue;
    tcpPorts.set(dest.srcPort, [...(tcpPorts.get(dest.srcPort) ?? []), { serviceName: spec.serviceName, dest }]);
  }
  for (const name of backendNames(spec)) backends.set(name, spec.serviceName);
  return { byAcl, tcpPorts, backends };
}

function withoutIndexed(index: NameIndex, spec: ServiceSpec): NameIndex {
  const byAcl = new Map(index.byAcl);
  if (byAcl.get(spec.aclName) === spec.serviceName) byAcl.delete(spec.aclName);
  const tcpPorts = new Map(index.tcpPorts);
  for (const dest of spec.destinations) {
    if (dest.reqMode === 'http' || dest.srcPort === undefined) continue;
    const left = (tcpPorts.get(dest.srcPort) ?? []).filter((t) => t.serviceName !== spec.serviceName);
    if (left.length === 0) tcpPorts.delete(dest.srcPort);
    else tcpPorts.set(dest.srcPort, left);
  }
  const backends = new Map(index.backends);
  for (const name of backendNames(spec)) if (backends.get(name) === spec.serviceName) backends.delete(name);
  return { byAcl, tcpPorts, backends };
}

/**
 * Two TCP-level destinations on one port: only reqMode=sni ones share it, told apart by server
 * name, so their names must not overlap; a plain tcp one has the port to itself.
 */
function checkPortShare(mine: Destination, theirs: Destination, owner: string): void {
  if (mine.reqMode === 'tcp' || theirs.reqMode === 'tcp') {
    throw new InvalidParamError('srcPort', `srcPort ${mine.srcPort} is already the TCP port of ${owner}${mine.reqMode === 'sni' || theirs.reqMode === 'sni' ? ' (only reqMode=sni services share a port, by server name)' : ''}`);
  }
  const taken = mine.serviceDomain.find((d) => theirs.serviceDomain.includes(d));
  if (taken !== undefined) throw new InvalidParamError('serviceDomain', `server name ${taken} on port ${mine.srcPort} is already routed to ${owner}`);
}

export function withoutService(state: DesiredState, serviceName: string): DesiredState {
  if (!state.services.has(serviceName)) return state;
  const services = new Map(state.services);
  const removed = services.get(serviceName);
  services.delete(serviceName);
  const index = indexes.get(state.services);
  if (index !== undefined && removed !== undefined) indexes.set(services, withoutIndexed(index, removed));
  return prune({ services, instances: state.instances });
}

export function withInstances(state: DesiredState, consulName: string, instances: readonly Instance[]): DesiredState {
  const known = state.instances.get(consulName);
  // Unchanged (a watch's first answer, a re-read): the same state, so nothing is rendered.
  if (known === undefined || sameInstances(known, instances)) return state;
  const byConsul = new Map(state.instances);
  byConsul.set(consulName, instances);
  return { services: state.services, instances: byConsul };
}

/** Drops instance lists no service refers to any more. */
function prune(state: DesiredState): DesiredState {
  const used = new Set([...state.services.values()].map(consulServiceName));
  const instances = new Map([...state.instances].filter(([name]) => used.has(name)));
  return { services: state.services, instances };
}

export function serviceStates(state: DesiredState): ServiceState[] {
  return [...state.services.values()].map((spec) => ({ spec, instances: state.instances.get(consulServiceName(spec)) ?? [] }));
}

function sameInstances(a: readonly Instance[], b: readonly Instance[]): boolean {
  return a.length === b.length && a.every((x, i) => x.id === b[i]?.id && x.address === b[i]?.address && x.port === b[i]?.port);
}
