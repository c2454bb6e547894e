import type { Instance } from '../discovery/types.js';
import { InvalidParamError } from '../errors.js';
import type { ServiceState } from './service-state.js';
import { backendName, consulServiceName, type Destination, routedSpec, type ServiceSpec } from '../spec/types.js';
import { CowMap } from '../util/cow-map.js';

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
  return withServices(state, [{ spec, instances }], (_spec, err) => {
    throw err;
  });
}

/** A spec for withServices; no `instances`: keep the list known for its Consul service (none: empty). */
export interface ServiceEntry {
  readonly spec: ServiceSpec;
  readonly instances?: readonly Instance[] | undefined;
}

/**
 * Adds or replaces many services at once. The maps are copy-on-write (util/cow-map.ts): a change
 * costs the services it touches, not a copy of every one held (a restore of 10,000 services one
 * withService at a time copied ~2 x 10^8 map entries; one reconfigure at 10,000 copied ~40,000).
 * Each spec is checked against the others as withService checks it, in order; one refused is
 * handed to `refused` and left out (the ones before and after it stay).
 */
export function withServices(state: DesiredState, entries: readonly ServiceEntry[], refused: (spec: ServiceSpec, err: InvalidParamError) => void): DesiredState {
  if (entries.length === 0) return state;
  const index = copyIndex(indexOf(state.services));
  const services = CowMap.edit(state.services);
  const byConsul = CowMap.edit(state.instances);
  // How many services use each Consul service, counted once the batch first needs it: only a
  // replaced spec that used another Consul service can leave an instance list unused, which goes
  // at once (a later spec of the batch must not find it), as it would one withService at a time.
  let uses: Map<string, number> | undefined;
  const countUses = (): Map<string, number> => {
    if (uses === undefined) {
      uses = new Map();
      for (const s of services.values()) uses.set(consulServiceName(s), (uses.get(consulServiceName(s)) ?? 0) + 1);
    }
    return uses;
  };
  for (const { spec, instances } of entries) {
    try {
      checkNames(index, spec);
    } catch (err) {
      if (!(err instanceof InvalidParamError)) throw err;
      refused(spec, err);
      continue;
    }
    const consulName = consulServiceName(spec);
    const replaced = services.get(spec.serviceName);
    const moved = replaced !== undefined && consulServiceName(replaced) !== consulName;
    if (moved) {
      const count = countUses();
      const old = consulServiceName(replaced);
      const left = (count.get(old) ?? 1) - 1;
      if (left > 0) count.set(old, left);
      else {
        count.delete(old);
        byConsul.delete(old);
      }
    }
    if (uses !== undefined && (replaced === undefined || moved)) uses.set(consulName, (uses.get(consulName) ?? 0) + 1);
    if (replaced !== undefined) removeIndexed(index, replaced);
    addIndexed(index, spec);
    services.set(spec.serviceName, spec);
    byConsul.set(consulName, instances ?? byConsul.get(consulName) ?? []);
  }
  indexes.set(services, index);
  return { services, instances: byConsul };
}

/** Throws when `spec`'s names or ports collide with another service's in `index`. */
function checkNames(index: NameIndex, spec: ServiceSpec): void {
  const mineByPort = new Map<number, Destination[]>();
  for (const d of spec.destinations) {
    if (d.reqMode === 'http' || d.srcPort === undefined) continue;
    for (const other of mineByPort.get(d.srcPort) ?? []) checkPortShare(d, other, `another destination of ${spec.serviceName}`);
    mineByPort.set(d.srcPort, [...(mineByPort.get(d.srcPort) ?? []), d]);
  }
  // Looked up in the index of the others' names and ports: a change costs the same at 10 services and at 10,000.
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
    for (const spec of services.values()) addIndexed(index, spec);
    indexes.set(services, index);
  }
  return index;
}

function backendNames(spec: ServiceSpec): string[] {
  return routedSpec(spec).destinations.map((d) => backendName(spec, d));
}

/** Puts a spec's names into an index nobody else holds (fresh, or a copy), in place. */
function addIndexed(index: NameIndex, spec: ServiceSpec): void {
  (index.byAcl as Map<string, string>).set(spec.aclName, spec.serviceName);
  const tcpPorts = index.tcpPorts as Map<number, { serviceName: string; dest: Destination }[]>;
  for (const dest of spec.destinations) {
    if (dest.reqMode === 'http' || dest.srcPort === undefined) continue;
    tcpPorts.set(dest.srcPort, [...(tcpPorts.get(dest.srcPort) ?? []), { serviceName: spec.serviceName, dest }]);
  }
  for (const name of backendNames(spec)) (index.backends as Map<string, string>).set(name, spec.serviceName);
}

function copyIndex(index: NameIndex): NameIndex {
  return { byAcl: CowMap.edit(index.byAcl), tcpPorts: CowMap.edit(index.tcpPorts), backends: CowMap.edit(index.backends) };
}

/** Takes a spec's names out of an index nobody else holds (a copy), in place. */
function removeIndexed(index: NameIndex, spec: ServiceSpec): void {
  const byAcl = index.byAcl as Map<string, string>;
  if (byAcl.get(spec.aclName) === spec.serviceName) byAcl.delete(spec.aclName);
  const tcpPorts = index.tcpPorts as Map<number, { serviceName: string; dest: Destination }[]>;
  for (const dest of spec.destinations) {
    if (dest.reqMode === 'http' || dest.srcPort === undefined) continue;
    const left = (tcpPorts.get(dest.srcPort) ?? []).filter((t) => t.serviceName !== spec.serviceName);
    if (left.length === 0) tcpPorts.delete(dest.srcPort);
    else tcpPorts.set(dest.srcPort, left);
  }
  const backends = index.backends as Map<string, string>;
  for (const name of backendNames(spec)) if (backends.get(name) === spec.serviceName) backends.delete(name);
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
  return withoutServices(state, [serviceName]);
}

/** Removes many services, copying the maps once for the batch. */
export function withoutServices(state: DesiredState, serviceNames: readonly string[]): DesiredState {
  const gone = serviceNames.filter((name) => state.services.has(name));
  if (gone.length === 0) return state;
  const known = indexes.get(state.services);
  const index = known === undefined ? undefined : copyIndex(known);
  const services = CowMap.edit(state.services);
  for (const name of gone) {
    const removed = services.get(name);
    services.delete(name);
    if (index !== undefined && removed !== undefined) removeIndexed(index, removed);
  }
  if (index !== undefined) indexes.set(services, index);
  return prune({ services, instances: state.instances });
}

export function withInstances(state: DesiredState, consulName: string, instances: readonly Instance[]): DesiredState {
  const known = state.instances.get(consulName);
  // Unchanged (a watch's first answer, a re-read): the same state, so nothing is rendered.
  if (known === undefined || sameInstances(known, instances)) return state;
  const byConsul = CowMap.edit(state.instances);
  byConsul.set(consulName, instances);
  return { services: state.services, instances: byConsul };
}

/** Drops instance lists no service refers to any more. */
function prune(state: DesiredState): DesiredState {
  const used = new Set([...state.services.values()].map(consulServiceName));
  const instances = new Map([...state.instances].filter(([name]) => used.has(name)));
  return { services: state.services, instances };
}

/**
 * The services with their instances. The same array for the same (immutable) state: a change is
 * planned from it more than once (precheck, apply), and plans are memoised by reference.
 */
export function serviceStates(state: DesiredState): readonly ServiceState[] {
  let out = statesOf.get(state);
  if (out === undefined) {
    out = [...state.services.values()].map((spec) => {
      const instances = state.instances.get(consulServiceName(spec)) ?? NONE;
      // The same object as last time for an unchanged service: a change allocates what it changes.
      const last = lastStateOf.get(spec);
      if (last !== undefined && last.instances === instances) return last;
      const fresh = { spec, instances };
      lastStateOf.set(spec, fresh);
      return fresh;
    });
    statesOf.set(state, out);
  }
  return out;
}

const statesOf = new WeakMap<DesiredState, readonly ServiceState[]>();
const lastStateOf = new WeakMap<ServiceSpec, ServiceState>();
const NONE: readonly Instance[] = [];

function sameInstances(a: readonly Instance[], b: readonly Instance[]): boolean {
  return a.length === b.length && a.every((x, i) => x.id === b[i]?.id && x.address === b[i]?.address && x.port === b[i]?.port);
}
