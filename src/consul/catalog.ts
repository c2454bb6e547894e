import type { HealthEntry } from './instances.js';

/** One service instance in `/v1/catalog/node-services/<node>` (the fields routing needs). */
export interface NodeServiceEntry {
  readonly ID?: string;
  readonly Service?: string;
  readonly Address?: string;
  readonly Port?: number;
  readonly ModifyIndex?: number;
}

/** `/v1/catalog/node-services/<node>`; Consul 1.8.7 answers `{"Node":null,"Services":null}` for a node it does not know. */
export interface NodeServicesAnswer {
  readonly Node: { readonly Node?: string; readonly Address?: string } | null;
  readonly Services: readonly NodeServiceEntry[] | null;
}

/** One check of `/v1/health/state/any`. */
export interface CheckEntry {
  readonly Node?: string;
  readonly CheckID?: string;
  readonly Status?: string;
  readonly ServiceID?: string;
  readonly ServiceName?: string;
}

/** What a model update changed. */
export interface ModelChange {
  /** Lower-case names of the services whose instances may differ now. */
  readonly affected: Set<string>;
  /** An instance appeared or changed: it may be routable now, if its checks allow. */
  readonly gained: boolean;
}

/** A check that stopped being non-passing: its instance (or node, `serviceId` '') may be routable again. */
export interface Recovery {
  readonly node: string;
  readonly serviceId: string;
  /** Lower-case service name ('' for a node-level check). */
  readonly service: string;
}

interface ModelInstance {
  readonly id: string;
  readonly name: string;
  readonly lower: string;
  readonly address: string;
  readonly port: number;
  readonly modifyIndex: number;
  /** The update that last saw it (removals are the instances an update did not see). */
  mark: number;
}

interface ModelNode {
  readonly name: string;
  address: string;
  readonly all: Map<string, ModelInstance>;
  /** Lower-case service name -> instance ID -> instance. */
  readonly byName: Map<string, Map<string, ModelInstance>>;
}

/**
 * The part of Consul's catalog that routing needs, kept from per-node reads
 * (`/v1/catalog/node-services/<node>`) and the non-passing checks (`/v1/health/state/any` filtered),
 * with the semantics of `/v1/health/service/<name>?passing`: an instance is routable iff it is
 * registered and no check on it (same node, its ServiceID) or on its node (ServiceID "") is
 * anything but passing. Service names match case-insensitively, as Consul's do.
 *
 * Every update says which services it may have changed, so a change costs work for those only
 * (a node's read is compared entry by entry, unchanged entries are kept as they are).
 */
export class CatalogModel {
  private readonly nodes = new Map<string, ModelNode>();
  /** Lower-case service name -> the nodes with an instance of it. */
  private readonly hosts = new Map<string, Set<string>>();
  /** Lower-case node name -> service ID ('' for the node itself) -> lower-case service name. */
  private nonPassing = new Map<string, Map<string, string>>();
  /** Lower-case node name -> node name (checks name their node as registered). */
  private readonly nodeNames = new Map<string, string>();
  private generation = 0;

  hasNode(node: string): boolean {
    return this.nodes.has(node);
  }

  instanceCount(node: string): number {
    return this.nodes.get(node)?.all.size ?? 0;
  }

  /** Replaces what is known of a node with a fresh read of its services. */
  setNode(node: string, address: string, services: readonly NodeServiceEntry[]): ModelChange {
    const mark = ++this.generation;
    let data = this.nodes.get(node);
    const affected = new Set<string>();
    let gained = false;
    if (!data) {
      data = { name: node, address, all: new Map(), byName: new Map() };
      this.nodes.set(node, data);
      this.nodeNames.set(node.toLowerCase(), node);
    }
    const moved = data.address !== address;
    data.address = address;
    for (const s of services) {
      if (typeof s.ID !== 'string' || typeof s.Service !== 'string') continue;
      const prev = data.all.get(s.ID);
      if (prev && prev.modifyIndex === (s.ModifyIndex ?? 0) && prev.name === s.Service && prev.address === (s.Address ?? '') && prev.port === (s.Port ?? 0)) {
        prev.mark = mark;
        // An instance without an address of its own moves with its node.
        if (moved && prev.address === '') {
          affected.add(prev.lower);
          gained = true;
        }
        continue;
      }
      const inst: ModelInstance = {
        id: s.ID,
        name: s.Service,
        lower: s.Service.toLowerCase(),
        address: s.Address ?? '',
        port: s.Port ?? 0,
        modifyIndex: s.ModifyIndex ?? 0,
        mark,
      };
      if (prev) this.forget(data, prev, affected);
      data.all.set(inst.id, inst);
      entry(data.byName, inst.lower, () => new Map<string, ModelInstance>()).set(inst.id, inst);
      entry(this.hosts, inst.lower, () => new Set<string>()).add(node);
      affected.add(inst.lower);
      gained = true;
    }
    for (const inst of data.all.values()) if (inst.mark !== mark) this.forget(data, inst, affected);
    return { affected, gained };
  }

  removeNode(node: string): ModelChange {
    const data = this.nodes.get(node);
    if (!data) return { affected: new Set(), gained: false };
    const affected = new Set<string>();
    for (const inst of [...data.all.values()]) this.forget(data, inst, affected);
    this.nodes.delete(node);
    this.nodeNames.delete(node.toLowerCase());
    return { affected, gained: false };
  }

  /** Forgets one instance (a read showed it deregistered before its node's own read arrived). */
  removeInstance(node: string, id: string): ModelChange {
    const data = this.nodes.get(node);
    const inst = data?.all.get(id);
    const affected = new Set<string>();
    if (data && inst) this.forget(data, inst, affected);
    return { affected, gained: false };
  }

  /** Replaces the set of non-passing checks (every check whose Status is not "passing"). */
  setChecks(checks: readonly CheckEntry[]): { affected: Set<string>; recovered: Recovery[] } {
    const next = new Map<string, Map<string, string>>();
    for (const c of checks) {
      if (typeof c.Node !== 'string' || c.Status === 'passing') continue;
      const node = c.Node.toLowerCase();
      const sid = c.ServiceID ?? '';
      entry(next, node, () => new Map<string, string>()).set(sid, sid === '' ? '' : (c.ServiceName ?? '').toLowerCase());
    }
    const affected = new Set<string>();
    const recovered: Recovery[] = [];
    const touch = (node: string, sid: string, service: string) => {
      const data = this.nodeByLower(node);
      if (sid === '') {
        for (const lower of data?.byName.keys() ?? []) affected.add(lower);
        return;
      }
      const inst = data?.all.get(sid);
      if (inst) affected.add(inst.lower);
      if (service !== '') affected.add(service);
    };
    for (const [node, ids] of next) {
      const old = this.nonPassing.get(node);
      for (const [sid, service] of ids) if (!old?.has(sid)) touch(node, sid, service);
    }
    for (const [node, ids] of this.nonPassing) {
      const now = next.get(node);
      for (const [sid, service] of ids) {
        if (now?.has(sid)) continue;
        touch(node, sid, service);
        recovered.push({ node: this.nodeByLower(node)?.name ?? node, serviceId: sid, service });
      }
    }
    this.nonPassing = next;
    return { affected, recovered };
  }

  /**
   * The instances of a service as `/v1/health/service/<name>[?passing]` lists them: ordered by
   * node, then service ID (Consul's index order), routable ones only when `passingOnly`.
   */
  entries(service: string, passingOnly: boolean): HealthEntry[] {
    const lower = service.toLowerCase();
    const out: { key: string; entry: HealthEntry }[] = [];
    for (const node of this.hosts.get(lower) ?? []) {
      const data = this.nodes.get(node);
      if (!data) continue;
      const failing = passingOnly ? this.nonPassing.get(node.toLowerCase()) : undefined;
      if (failing?.has('')) continue;
      for (const inst of data.byName.get(lower)?.values() ?? []) {
        if (failing?.has(inst.id)) continue;
        out.push({
          key: `${node.toLowerCase()}\u0000${inst.id.toLowerCase()}\u0000${node}\u0000${inst.id}`,
          entry: { Node: { Node: node, Address: data.address }, Service: { ID: inst.id, Service: inst.name, Address: inst.address, Port: inst.port } },
        });
      }
    }
    out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return out.map((e) => e.entry);
  }

  private nodeByLower(lowerNode: string): ModelNode | undefined {
    const name = this.nodeNames.get(lowerNode);
    return name === undefined ? undefined : this.nodes.get(name);
  }

  private forget(data: ModelNode, inst: ModelInstance, affected: Set<string>): void {
    data.all.delete(inst.id);
    const ids = data.byName.get(inst.lower);
    ids?.delete(inst.id);
    if (ids?.size === 0) {
      data.byName.delete(inst.lower);
      const nodes = this.hosts.get(inst.lower);
      nodes?.delete(data.name);
      if (nodes?.size === 0) this.hosts.delete(inst.lower);
    }
    affected.add(inst.lower);
  }
}

/** The value under `key`, created first if missing. */
export function entry<K, V>(map: Map<K, V>, key: K, make: () => V): V {
  let value = map.get(key);
  if (value === undefined) {
    value = make();
    map.set(key, value);
  }
  return value;
}
