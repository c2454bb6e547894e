import type { Instance } from '../discovery/types.js';
import { type BackendAllocation, instanceIds, MAP_NAMES, type MapEntry, type MapName, type RenderedConfig } from '../render/haproxy-config.js';
import { assignSlots, type SlotTable, slotName } from '../render/slots.js';
import type { ServiceState } from '../state/service-state.js';
import { backendName, type Destination, dnsTarget, routedSpec, type ServiceSpec } from '../spec/types.js';
import { CowMap } from '../util/cow-map.js';

/**
 * Pure decisions of the applier: which backend names to use, and whether a change can go out
 * through HAProxy's runtime API (no reload) or needs a validated reload.
 */

export const SPARE_PREFIX = 'dfp-spare-';

/** Every backend key the services need, with the IDs of the instances its slots hold. */
function backendIds(services: readonly ServiceState[]): Map<string, readonly string[]> {
  const out = new Map<string, readonly string[]>();
  for (const { spec, instances } of services) {
    const ids = instanceIds(instances);
    for (const d of routedSpec(spec).destinations) out.set(backendName(spec, d), dnsTarget(spec, d) === undefined ? ids : []);
  }
  return out;
}

/**
 * The allocation a reload uses: every backend under its canonical name, plus spares for the
 * services that will be added before the next reload. The pool grows with the service count, so
 * running out (and paying a reload) happens geometrically less often. Slot holders carry over from
 * `previous` (a sticky cookie names a slot), and full tables grow (render/slots.ts).
 */
export function canonicalAllocation(services: readonly ServiceState[], minSpares: number, minSlots: number, previous?: BackendAllocation): BackendAllocation {
  const keys = backendIds(services);
  const count = Math.max(minSpares, Math.ceil(keys.size / 4));
  const slots = new Map<string, SlotTable>();
  for (const [key, ids] of keys) {
    const was = previous?.slots.get(previous.names.get(key) ?? key);
    slots.set(key, assignSlots(was, ids, minSlots, true) ?? []);
  }
  const spares = Array.from({ length: count }, (_, i) => `${SPARE_PREFIX}${i + 1}`);
  for (const name of spares) slots.set(name, Array.from({ length: minSlots }, () => undefined));
  return { names: new Map([...keys.keys()].map((k) => [k, k])), spares, retired: [], slots, spareChecks: spareChecks(services) };
}

/**
 * Whether spares carry `check`: as most services' HTTP backends do (ties and no service: checks).
 * A service whose backend differs from a spare in that needs a reload to go live, so the spares
 * follow the majority; decided at reloads only, so adding services at run time never flips it.
 */
export function spareChecks(services: readonly ServiceState[]): boolean {
  let checked = 0;
  let unchecked = 0;
  for (const { spec } of services) {
    // The backends a spare could stand for, as backendIds counts them (httpsPort: two).
    for (const d of routedSpec(spec).destinations) {
      if (d.reqMode !== 'http' || dnsTarget(spec, d) !== undefined) continue;
      if (spec.skipCheck) unchecked++;
      else checked++;
    }
  }
  return checked >= unchecked;
}

/**
 * The allocation after a change applied at run time: known backends keep their names and slot
 * holders, new ones take spares, removed ones are retired (emptied, never reused before a reload,
 * so stats never show one service under another's name); newcomers take free slots. A string (why)
 * when that is impossible without a reload: no spare backend or no free slot left.
 */
export function runtimeAllocation(previous: BackendAllocation, services: readonly ServiceState[], minSlots: number): BackendAllocation | string {
  const keys = backendIds(services);
  const spares = [...previous.spares];
  const names = new Map<string, string>();
  const slots = new Map<string, SlotTable>();
  for (const [key, ids] of keys) {
    let name = previous.names.get(key);
    if (name === undefined) {
      name = spares.shift();
      if (name === undefined) return 'no spare backend left';
    }
    names.set(key, name);
    const was = previous.slots.get(name) ?? Array.from({ length: minSlots }, () => undefined);
    const table = assignSlots(was, ids, minSlots, false);
    if (table === undefined) return `backend ${key} (${ids.length} instances, ${was.length} server slots)`;
    slots.set(name, table);
  }
  const retired = [...previous.retired];
  for (const [key, name] of previous.names) if (!keys.has(key)) retired.push(name);
  for (const name of [...spares, ...retired]) {
    const was = previous.slots.get(name);
    // Emptied; an already empty table is kept as is, so its rendered section is reused.
    if (was) slots.set(name, was.every((id) => id === undefined) ? was : was.map(() => undefined));
  }
  return { names, spares, retired, slots, ...(previous.spareChecks === undefined ? {} : { spareChecks: previous.spareChecks }) };
}

export type RuntimeOp =
  /** Point a slot at an instance and put it in rotation (also for an instance that moved). */
  | { readonly kind: 'fill-slot'; readonly backend: string; readonly slot: string; readonly address: string; readonly port: number }
  /** Take a departed instance's slot out of rotation: requests in flight finish. */
  | { readonly kind: 'free-slot'; readonly backend: string; readonly slot: string }
  | { readonly kind: 'set-map'; readonly map: MapName; readonly key: string; readonly value: string; readonly isNew: boolean }
  | { readonly kind: 'del-map'; readonly map: MapName; readonly key: string };

/** Equal skeletons, part by part: memoised sections are the very same strings, so this is mostly pointer compares. */
function sameSkeleton(a: Pick<RenderedConfig, 'skeletonParts'>, b: Pick<RenderedConfig, 'skeletonParts'>): boolean {
  const x = a.skeletonParts;
  const y = b.skeletonParts;
  if (x === y) return true;
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/**
 * The runtime API commands that turn `before` into `after`, or undefined when something other
 * than slot addresses and map entries differs (then only a reload is correct; reloadReasons says why).
 */
export function runtimeOps(before: RenderedConfig, after: RenderedConfig): RuntimeOp[] | undefined {
  if (!sameSkeleton(before, after) || before.secrets !== after.secrets) return undefined;
  const fills: RuntimeOp[] = [];
  const frees: RuntimeOp[] = [];
  for (const [backend, b] of after.backends) {
    const old = before.backends.get(backend);
    // Rendering memoises sections: an untouched backend is the very same object.
    if (old === b) continue;
    const was = old?.slots ?? [];
    b.slots.forEach((slot, i) => {
      const held = was[i]?.instance;
      const now = slot.instance;
      if (now && (held === undefined || held.address !== now.address || held.port !== now.port)) {
        fills.push({ kind: 'fill-slot', backend, slot: slot.name, address: now.address, port: now.port });
      } else if (!now && held) frees.push({ kind: 'free-slot', backend, slot: slot.name });
    });
  }
  const mapOps: RuntimeOp[] = [];
  const mapDels: RuntimeOp[] = [];
  for (const map of MAP_NAMES) {
    if (before.maps[map] === after.maps[map]) continue;
    const prev = parseMap(before.maps[map]);
    const next = parseMap(after.maps[map]);
    for (const [key, value] of next) {
      if (prev.get(key) !== value) mapOps.push({ kind: 'set-map', map, key, value, isNew: !prev.has(key) });
    }
    for (const key of prev.keys()) if (!next.has(key)) mapDels.push({ kind: 'del-map', map, key });
  }
  // Servers first, so a new route never points at a backend that is still being filled; routes
  // go away before their servers do.
  return [...fills, ...mapOps, ...mapDels, ...frees];
}

/** The skeleton split at its section headers (`global`, `defaults`, `frontend services`, `backend x`): header -> text. */
export function skeletonSections(skeleton: string): Map<string, string> {
  const out = new Map<string, string>();
  let header = '';
  let body: string[] = [];
  const flush = () => {
    if (header !== '') out.set(header, body.join('\n').trimEnd());
  };
  for (const line of skeleton.split('\n')) {
    if (/^[a-z]/.test(line)) {
      flush();
      header = line.trim();
      body = [];
    } else body.push(line);
  }
  flush();
  return out;
}

/**
 * Why `after` cannot go live through the runtime API from `before`: each config section whose
 * lines differ (`global`, `defaults`, `frontend services`, `backend web-be_0 (lines changed)`,
 * `(new)`, `(removed)`; a backend's server slot count and keywords are among its lines), and
 * `credentials file` (credentials.cfg). Empty when
 * runtimeOps can do it. `keys` maps HAProxy backend names to backend keys, so a backend serving on
 * a spare's name is named after its service.
 */
export function reloadReasons(before: RenderedConfig, after: RenderedConfig, keys: ReadonlyMap<string, string> = new Map()): string[] {
  const label = (name: string, what: string) => {
    const key = keys.get(name);
    return key === undefined || key === name ? `backend ${name} (${what})` : `backend ${key} (${what}; live as ${name})`;
  };
  const reasons: string[] = [];
  if (!sameSkeleton(before, after)) {
    const was = skeletonSections(before.skeleton);
    const now = skeletonSections(after.skeleton);
    const describe = (header: string, what: string) => {
      const m = /^backend (\S+)$/.exec(header);
      return m?.[1] ? label(m[1], what) : header;
    };
    for (const [header, text] of now) {
      const old = was.get(header);
      if (old === undefined) reasons.push(describe(header, 'new'));
      else if (old !== text) reasons.push(describe(header, 'lines changed'));
    }
    for (const header of was.keys()) if (!now.has(header)) reasons.push(describe(header, 'removed'));
    // The preamble before the first section (never expected to differ, but never silent either).
    if (reasons.length === 0) reasons.push('haproxy.cfg');
  }
  // Named without the file's name: what status shows must not even hint at the userlists' content.
  if (before.secrets !== after.secrets) reasons.push('credentials file');
  return reasons;
}

export function parseMap(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(' ');
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** What a change made of scale events and added services does at run time, found without rendering. */
export interface DeltaPlan {
  readonly ops: RuntimeOp[];
  readonly allocation: BackendAllocation;
  readonly byName: ReadonlyMap<string, ServiceState>;
  /** The map entries the added services brought (the caller's route tables gain them). */
  readonly entries: readonly MapEntry[];
  /** The services changed or added, by name: only their backends differ (render/haproxy-config.ts patchConfig). */
  readonly touched: readonly string[];
}

/** How the caller derives an added service's map entries (render/haproxy-config.ts runtimeAddition). */
export type AddService = (spec: ServiceSpec, nameOf: (dest: Destination) => string, slotsOf: (name: string) => number) => { entries: MapEntry[]; lookups: string[] } | undefined;

export interface DeltaContext {
  readonly add: AddService;
  /** The route tables live now: an added key must be new to them. */
  readonly tables: Readonly<Record<MapName, ReadonlyMap<string, string>>>;
  /** The frontend lookups live now: an added route must need no other. */
  readonly lookups: ReadonlySet<string>;
}

/**
 * The runtime commands of a change in which instance lists moved and services were added (every
 * other spec the same, by reference, under the same name), found from the changed and added
 * services alone, without rendering the config: a scale event or a new service costs the same at
 * 10 services and at 10,000. Undefined when the change is anything else, or needs a render (an
 * added service whose routes or backend need more than map entries and a spare; a backend that
 * must grow; a sticky service; without `context`, any added service): the caller takes the
 * general path. The commands, slot tables and files are those of the general path (unit tests
 * hold them equal).
 */
export function deltaOps(
  before: ReadonlyMap<string, ServiceState>,
  services: readonly ServiceState[],
  allocation: BackendAllocation,
  minSlots: number,
  context?: DeltaContext,
): DeltaPlan | undefined {
  // The services by name: `before` with the changed and added ones set (copy-on-write).
  const byName = CowMap.edit(before);
  const changed: [ServiceState, ServiceState][] = [];
  const added: ServiceState[] = [];
  let kept = 0;
  for (const s of services) {
    const was = before.get(s.spec.serviceName);
    if (was === undefined) {
      added.push(s);
      byName.set(s.spec.serviceName, s);
      continue;
    }
    kept++;
    if (was.spec !== s.spec) return undefined;
    if (was.instances !== s.instances) {
      changed.push([was, s]);
      byName.set(s.spec.serviceName, s);
    }
  }
  // Every service of before is still here (none removed), and none is listed twice.
  if (kept !== before.size || new Set(services.map((s) => s.spec.serviceName)).size !== services.length) return undefined;
  if (added.length > 0 && context === undefined) return undefined;
  const fills: RuntimeOp[] = [];
  const frees: RuntimeOp[] = [];
  let slots: Map<string, SlotTable> | undefined;
  const setSlots = (name: string, table: SlotTable) => {
    slots ??= CowMap.edit(allocation.slots);
    slots.set(name, table);
  };
  const fillSlots = (name: string, previous: SlotTable, table: SlotTable, held: ReadonlyMap<string, Instance>, next: ReadonlyMap<string, Instance>) => {
    table.forEach((id, i) => {
      const old = previous[i] === undefined ? undefined : held.get(previous[i] as string);
      const fresh = id === undefined ? undefined : next.get(id);
      const slot = slotName(i);
      if (fresh && (old === undefined || old.address !== fresh.address || old.port !== fresh.port)) {
        fills.push({ kind: 'fill-slot', backend: name, slot, address: fresh.address, port: fresh.port });
      } else if (!fresh && old) frees.push({ kind: 'free-slot', backend: name, slot });
    });
    if (table !== previous) setSlots(name, table);
  };
  for (const [was, now] of changed) {
    // A sticky cookie names a slot: such services keep the general path (plan.ts canonicalAllocation).
    if (now.spec.sessionType !== undefined) return undefined;
    const ids = instanceIds(now.instances);
    const held = byId(was.instances);
    const next = byId(now.instances);
    for (const d of routedSpec(now.spec).destinations) {
      if (dnsTarget(now.spec, d) !== undefined) continue;
      const key = backendName(now.spec, d);
      const name = allocation.names.get(key) ?? key;
      const previous = allocation.slots.get(name);
      if (previous === undefined) return undefined;
      const table = assignSlots(previous, ids, minSlots, false);
      if (table === undefined) return undefined;
      fillSlots(name, previous, table, held, next);
    }
  }
  const entries: MapEntry[] = [];
  let names: Map<string, string> | undefined;
  let spares = allocation.spares;
  if (added.length > 0 && context !== undefined) {
    names = CowMap.edit(allocation.names);
    const free = [...allocation.spares];
    const taken = new Set<string>();
    for (const s of added) {
      // Spares in the order runtimeAllocation hands them out: services, then destinations.
      const mine = new Map<Destination, string>();
      for (const d of routedSpec(s.spec).destinations) {
        const key = backendName(s.spec, d);
        const spare = free.shift();
        if (spare === undefined || names.has(key)) return undefined;
        names.set(key, spare);
        mine.set(d, spare);
      }
      const slotsOf = (name: string) => allocation.slots.get(name)?.length ?? minSlots;
      const addition = context.add(s.spec, (d) => mine.get(d) ?? '', slotsOf);
      if (addition === undefined || addition.lookups.some((l) => !context.lookups.has(l))) return undefined;
      for (const e of addition.entries) {
        const id = `${e.map}\0${e.key}`;
        // A route someone holds already: who wins is the general path's to say.
        if (context.tables[e.map].has(e.key) || taken.has(id)) return undefined;
        taken.add(id);
        entries.push(e);
      }
      const ids = instanceIds(s.instances);
      const next = byId(s.instances);
      for (const name of mine.values()) {
        const previous = allocation.slots.get(name) ?? Array.from({ length: minSlots }, () => undefined);
        const table = assignSlots(previous, ids, minSlots, false);
        if (table === undefined) return undefined;
        fillSlots(name, previous, table, new Map(), next);
      }
    }
    spares = free;
  }
  const mapOps: RuntimeOp[] = entries.map((e) => ({ kind: 'set-map', map: e.map, key: e.key, value: e.value, isNew: true }));
  const changedAllocation = slots !== undefined || names !== undefined;
  return {
    ops: [...fills, ...mapOps, ...frees],
    allocation: changedAllocation ? { ...allocation, ...(names ? { names, spares } : {}), ...(slots ? { slots } : {}) } : allocation,
    byName,
    entries,
    touched: [...changed.map(([, now]) => now.spec.serviceName), ...added.map((s) => s.spec.serviceName)],
  };
}

/** The scale events of a change alone (deltaOps without added services). */
export function scaleOnlyOps(before: ReadonlyMap<string, ServiceState>, services: readonly ServiceState[], allocation: BackendAllocation, minSlots: number): DeltaPlan | undefined {
  return deltaOps(before, services, allocation, minSlots);
}

/** By ID, the last of equal IDs winning, as the renderer picks them (render/haproxy-config.ts backendSection). */
function byId(instances: readonly Instance[]): Map<string, Instance> {
  return new Map(instances.map((i) => [i.id, i]));
}
