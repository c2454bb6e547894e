import { type BackendAllocation, MAP_NAMES, type MapName, type RenderedConfig, type RenderedServer } from '../render/haproxy-config.js';
import type { ServiceState } from '../state/service-state.js';
import { backendName } from '../spec/types.js';

/**
 * Pure decisions of the applier: which backend names to use, and whether a change can go out
 * through HAProxy's runtime API (no reload) or needs a validated reload.
 */

export const SPARE_PREFIX = 'dfp-spare-';

/** Every backend key the services need. */
export function backendKeys(services: readonly ServiceState[]): string[] {
  return services.flatMap(({ spec }) => spec.destinations.map((d) => backendName(spec, d)));
}

/**
 * The allocation a reload uses: every backend under its canonical name, plus spares for the
 * services that will be added before the next reload. The pool grows with the service count, so
 * running out (and paying a reload) happens geometrically less often.
 */
export function canonicalAllocation(services: readonly ServiceState[], minSpares: number): BackendAllocation {
  const keys = backendKeys(services);
  const count = Math.max(minSpares, Math.ceil(keys.length / 4));
  return {
    names: new Map(keys.map((k) => [k, k])),
    spares: Array.from({ length: count }, (_, i) => `${SPARE_PREFIX}${i + 1}`),
    retired: [],
  };
}

/**
 * The allocation after a change applied at run time: known backends keep their names, new ones
 * take spares, removed ones are retired (emptied, never reused before a reload, so stats never
 * show one service under another's name). Undefined when the spares run out.
 */
export function runtimeAllocation(previous: BackendAllocation, services: readonly ServiceState[]): BackendAllocation | undefined {
  const keys = new Set(backendKeys(services));
  const spares = [...previous.spares];
  const names = new Map<string, string>();
  for (const key of keys) {
    const known = previous.names.get(key);
    if (known !== undefined) {
      names.set(key, known);
      continue;
    }
    const spare = spares.shift();
    if (spare === undefined) return undefined;
    names.set(key, spare);
  }
  const retired = [...previous.retired];
  for (const [key, name] of previous.names) if (!keys.has(key)) retired.push(name);
  return { names, spares, retired };
}

export type RuntimeOp =
  | { readonly kind: 'add-server'; readonly backend: string; readonly server: RenderedServer; readonly options: string }
  | { readonly kind: 'set-addr'; readonly backend: string; readonly server: RenderedServer }
  | { readonly kind: 'del-server'; readonly backend: string; readonly server: string }
  | { readonly kind: 'set-map'; readonly map: MapName; readonly key: string; readonly value: string; readonly isNew: boolean }
  | { readonly kind: 'del-map'; readonly map: MapName; readonly key: string };

/**
 * The runtime API commands that turn `before` into `after`, or undefined when something other
 * than servers and map entries differs (then only a reload is correct; reloadReasons says why).
 */
export function runtimeOps(before: RenderedConfig, after: RenderedConfig): RuntimeOp[] | undefined {
  if (before.skeleton !== after.skeleton || before.secrets !== after.secrets) return undefined;
  if (serverReasons(before, after).length > 0) return undefined;
  const adds: RuntimeOp[] = [];
  const moves: RuntimeOp[] = [];
  const dels: RuntimeOp[] = [];
  for (const [backend, b] of after.backends) {
    const before_ = before.backends.get(backend);
    const prev = new Map((before_?.servers ?? []).map((s) => [s.name, s]));
    for (const srv of b.servers) {
      const old = prev.get(srv.name);
      if (old === undefined) adds.push({ kind: 'add-server', backend, server: srv, options: b.serverOptions(srv) });
      else if (old.address !== srv.address || old.port !== srv.port) moves.push({ kind: 'set-addr', backend, server: srv });
      prev.delete(srv.name);
    }
    for (const name of prev.keys()) dels.push({ kind: 'del-server', backend, server: name });
  }
  const mapOps: RuntimeOp[] = [];
  const mapDels: RuntimeOp[] = [];
  for (const map of MAP_NAMES) {
    const prev = parseMap(before.maps[map]);
    const next = parseMap(after.maps[map]);
    for (const [key, value] of next) {
      if (prev.get(key) !== value) mapOps.push({ kind: 'set-map', map, key, value, isNew: !prev.has(key) });
    }
    for (const key of prev.keys()) if (!next.has(key)) mapDels.push({ kind: 'del-map', map, key });
  }
  // Servers first, so a new route never points at a backend that is still being filled; routes
  // go away before their servers do.
  return [...adds, ...moves, ...mapOps, ...mapDels, ...dels];
}

/**
 * Server changes the runtime API cannot make, per backend: HAProxy 2.6 cannot put a cookie on a
 * server added at run time (sticky backends), nor turn a server's health check on or off.
 */
function serverReasons(before: RenderedConfig, after: RenderedConfig, label: (backend: string, what: string) => string = (b, what) => `backend ${b} (${what})`): string[] {
  const out: string[] = [];
  for (const [backend, b] of after.backends) {
    const prev = new Map((before.backends.get(backend)?.servers ?? []).map((s) => [s.name, s]));
    if (b.sticky && b.servers.some((s) => !prev.has(s.name))) out.push(label(backend, 'sticky backend servers'));
    if (b.servers.some((s) => prev.has(s.name) && prev.get(s.name)?.check !== s.check)) out.push(label(backend, 'server check changed'));
  }
  return out;
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
 * `(new)`, `(removed)`), `credentials file` (credentials.cfg), and server changes the runtime API cannot make. Empty when
 * runtimeOps can do it. `keys` maps HAProxy backend names to backend keys, so a backend serving on
 * a spare's name is named after its service.
 */
export function reloadReasons(before: RenderedConfig, after: RenderedConfig, keys: ReadonlyMap<string, string> = new Map()): string[] {
  const label = (name: string, what: string) => {
    const key = keys.get(name);
    return key === undefined || key === name ? `backend ${name} (${what})` : `backend ${key} (${what}; live as ${name})`;
  };
  const reasons: string[] = [];
  if (before.skeleton !== after.skeleton) {
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
  reasons.push(...serverReasons(before, after, label));
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
