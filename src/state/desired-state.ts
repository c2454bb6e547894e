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
  const routed = routedSpec(spec);
  const mine = new Set(routed.destinations.map((d) => backendName(spec, d)));
  const roots = nameRoots(routed);
  for (const other of state.services.values()) {
    if (other.serviceName === spec.serviceName) continue;
    if (other.aclName === spec.aclName) {
      throw new InvalidParamError('aclName', `aclName ${spec.aclName} is already used by service ${other.serviceName}`);
    }
    for (const d of other.destinations) {
      if (d.reqMode === 'http' || d.srcPort === undefined) continue;
      for (const m of mineByPort.get(d.srcPort) ?? []) checkPortShare(m, d, `service ${other.serviceName}`);
    }
    // Backend names are `[https-]<aclName>-be…`: equal names need one root to be a prefix of the other.
    const theirs = routedSpec(other);
    const otherRoots = nameRoots(theirs);
    if (!roots.some((r) => otherRoots.some((o) => r.startsWith(o) || o.startsWith(r)))) continue;
    for (const d of theirs.destinations) {
      if (mine.has(backendName(other, d))) {
        throw new InvalidParamError('aclName', `backend ${backendName(other, d)} already belongs to service ${other.serviceName}; choose another aclName`);
      }
    }
  }
  const services = new Map(state.services);
  const replaced = services.get(spec.serviceName);
  services.set(spec.serviceName, spec);
  const byConsul = new Map(state.instances);
  byConsul.set(consulServiceName(spec), instances);
  // Only a replaced spec that used another Consul service can leave an instance list unused.
  const next = { services, instances: byConsul };
  return replaced !== undefined && consulServiceName(replaced) !== consulServiceName(spec) ? prune(next) : next;
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

/** What every backend name of a (routed) spec starts with. */
function nameRoots(spec: ServiceSpec): string[] {
  return spec.destinations.some((d) => d.https) ? [spec.aclName, `https-${spec.aclName}`] : [spec.aclName];
}

export function withoutService(state: DesiredState, serviceName: string): DesiredState {
  if (!state.services.has(serviceName)) return state;
  const services = new Map(state.services);
  services.delete(serviceName);
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
