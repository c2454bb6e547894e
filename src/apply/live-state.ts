import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { BackendAllocation, MapName, RenderSettings } from '../render/haproxy-config.js';
import { MAP_FILES, MAP_NAMES } from '../render/haproxy-config.js';
import type { SlotTable } from '../render/slots.js';

/**
 * What a run leaves in STATE_DIR besides HAProxy's files, so that the next start can take over the
 * HAProxy still serving them (or start one from them) without a reload:
 *
 * - `haproxy-live.json`: the hash of the files on disk when HAProxy was last known to serve exactly
 *   them, the hash of the settings they were rendered with, and the allocation (backend names and
 *   server slots) that rendered them. Rendering the restored services with that allocation gives
 *   the same bytes when nothing changed meanwhile: then the running HAProxy is kept as it is.
 * - `haproxy-live.pending`: exists while runtime API commands have gone out that the files do not
 *   show yet (a scale event's files are written up to a second later). A takeover then reloads.
 *
 * Files written before a reload that never completed are told by their hash: it is not the one
 * recorded, so the next start reloads too.
 */
export interface LiveFiles {
  readonly config: string;
  readonly maps: Readonly<Record<MapName, string>>;
  readonly secrets: string;
}

export interface LiveRecord {
  /** hashOf() the files HAProxy serves. */
  readonly hash: string;
  /** settingsHash() of the settings that rendered them. */
  readonly settings: string;
  readonly allocation: BackendAllocation;
}

export interface StatePaths {
  readonly stateDir: string;
  readonly config: string;
  readonly secrets: string;
}

const VERSION = 1;

export class LiveState {
  private readonly recordFile: string;
  private readonly pendingFile: string;
  /** The allocation last written, so an unchanged one is not serialised again (10,000 services: ~1 MB). */
  private lastWritten: { hash: string; allocation: BackendAllocation } | undefined;
  private pending: boolean | undefined;

  constructor(private readonly paths: StatePaths) {
    this.recordFile = path.join(paths.stateDir, 'haproxy-live.json');
    this.pendingFile = path.join(paths.stateDir, 'haproxy-live.pending');
  }

  /** The live files on disk, or undefined when one is missing (a fresh directory). */
  readFiles(): LiveFiles | undefined {
    try {
      const maps = Object.fromEntries(MAP_NAMES.map((m) => [m, readFileSync(path.join(this.paths.stateDir, MAP_FILES[m]), 'utf8')])) as Record<MapName, string>;
      return { config: readFileSync(this.paths.config, 'utf8'), maps, secrets: readFileSync(this.paths.secrets, 'utf8') };
    } catch {
      return undefined;
    }
  }

  /** The record of the last run, if readable and of this version. */
  readRecord(): LiveRecord | undefined {
    try {
      const raw = JSON.parse(readFileSync(this.recordFile, 'utf8')) as { version?: number; hash?: unknown; settings?: unknown; allocation?: unknown };
      if (raw.version !== VERSION || typeof raw.hash !== 'string' || typeof raw.settings !== 'string') return undefined;
      return { hash: raw.hash, settings: raw.settings, allocation: allocationFromJson(raw.allocation) };
    } catch {
      return undefined;
    }
  }

  /** Runtime commands went out that the files do not show yet. */
  pendingRuntime(): boolean {
    return existsSync(this.pendingFile);
  }

  /** The files on disk are what HAProxy serves, rendered with this allocation. */
  markServed(hash: string, settings: string, allocation: BackendAllocation): void {
    const last = this.lastWritten;
    if (last === undefined || last.hash !== hash || last.allocation !== allocation) {
      const tmp = `${this.recordFile}.tmp`;
      // Mode 600: the settings hash covers passwords (USERS, the stats page).
      writeFileSync(tmp, JSON.stringify({ version: VERSION, hash, settings, allocation: allocationToJson(allocation) }), { mode: 0o600 });
      renameSync(tmp, this.recordFile);
      this.lastWritten = { hash, allocation };
    }
    if (this.pending !== false) {
      rmSync(this.pendingFile, { force: true });
      this.pending = false;
    }
  }

  /** Runtime commands are about to go out ahead of the files (cheap when already marked). */
  markRuntimePending(): void {
    if (this.pending === true) return;
    writeFileSync(this.pendingFile, '');
    this.pending = true;
  }
}

/** What the settings contribute to the rendered files (the certificate list aside: it is state). */
export function settingsHash(settings: Omit<RenderSettings, 'mapDir'>): string {
  const { crtList: _ignored, ...rest } = settings;
  const json = JSON.stringify(rest, (_key, value: unknown) => (value instanceof Map ? [...value.entries()] : value));
  return createHash('sha256').update(json).digest('hex').slice(0, 16);
}

/**
 * The certificates a config loads: the crt-list it names and every file listed in it. A takeover
 * keeps HAProxy as it is only if these did not change since (certificates restored from Consul KV
 * are written before the first apply).
 */
export function certificatesFingerprint(config: string): string {
  const list = / crt-list (\S+)/.exec(config)?.[1];
  if (list === undefined) return '';
  const h = createHash('sha256');
  const text = readOr(list);
  h.update(text);
  for (const line of text.split('\n')) {
    const file = line.trim().split(/\s+/)[0];
    if (file) h.update('\0').update(file).update('\0').update(readOr(file));
  }
  return h.digest('hex').slice(0, 16);
}

function readOr(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '\0missing';
  }
}

type AllocationJson = { names: [string, string][]; spares: string[]; retired: string[]; slots: [string, (string | null)[]][]; lookups?: string[]; spareChecks?: boolean };

function allocationToJson(a: BackendAllocation): AllocationJson {
  return {
    names: [...a.names],
    spares: [...a.spares],
    retired: [...a.retired],
    slots: [...a.slots].map(([name, table]) => [name, table.map((id) => id ?? null)]),
    ...(a.lookups ? { lookups: [...a.lookups] } : {}),
    ...(a.spareChecks === undefined ? {} : { spareChecks: a.spareChecks }),
  };
}

function allocationFromJson(raw: unknown): BackendAllocation {
  const j = raw as AllocationJson;
  const strings = (v: unknown): string[] => {
    if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new Error('not a list of strings');
    return v as string[];
  };
  const pairs = <T>(v: unknown, value: (x: unknown) => T): [string, T][] => {
    if (!Array.isArray(v)) throw new Error('not a list');
    return v.map((p) => {
      if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string') throw new Error('not a pair');
      return [p[0], value(p[1])];
    });
  };
  const table = (v: unknown): SlotTable => {
    if (!Array.isArray(v)) throw new Error('not a slot table');
    return v.map((id) => (typeof id === 'string' ? id : undefined));
  };
  return {
    names: new Map(pairs(j.names, (v) => String(v))),
    spares: strings(j.spares),
    retired: strings(j.retired),
    slots: new Map(pairs(j.slots, table)),
    ...(j.lookups !== undefined ? { lookups: strings(j.lookups) } : {}),
    ...(typeof j.spareChecks === 'boolean' ? { spareChecks: j.spareChecks } : {}),
  };
}
