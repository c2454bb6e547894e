import { createHash } from 'node:crypto';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { HaproxyProcess } from '../haproxy/process.js';
import { validateConfig } from '../haproxy/validate.js';
import { MAP_FILES, type MapName, type RenderSettings, type RenderedConfig, renderConfig, type ServiceState } from '../render/haproxy-config.js';
import type { Logger } from '../util/log.js';

export type ApplyKind = 'reload' | 'none';

export interface ApplyRecord {
  readonly generation: number;
  readonly kind: ApplyKind;
  readonly trigger: string;
  readonly durationMs: number;
  readonly hash: string;
  readonly at: string;
}

export interface ApplierPaths {
  readonly stateDir: string;
  readonly config: string;
  /** Where candidates are written and checked by `haproxy -c` before anything live changes. */
  readonly candidateDir: string;
}

type Files = { readonly config: string; readonly maps: Readonly<Record<MapName, string>> };

/**
 * Turns desired state into live HAProxy config: render, skip if byte-identical, validate the
 * candidate with `haproxy -c`, swap the files in atomically, reload and confirm. If the reload
 * fails the previous files are put back, so the file on disk always matches what serves.
 * Callers serialise applies (apply/reconciler.ts); this class assumes one at a time.
 */
export class ConfigApplier {
  private live: Files | undefined;
  private generation = 0;
  private readonly history: ApplyRecord[] = [];

  constructor(
    private readonly haproxyBin: string,
    private readonly haproxy: HaproxyProcess,
    private readonly settings: Omit<RenderSettings, 'mapDir'>,
    private readonly paths: ApplierPaths,
    private readonly log: Logger,
  ) {}

  render(services: readonly ServiceState[], mapDir = this.paths.stateDir): RenderedConfig {
    return renderConfig({ ...this.settings, mapDir }, services);
  }

  /** Writes and validates the first config, before HAProxy starts. */
  async init(services: readonly ServiceState[]): Promise<void> {
    const rendered = this.render(services);
    await this.validate(services);
    this.writeLive(rendered);
    this.live = rendered;
    this.record('reload', 'start', 0, rendered);
  }

  liveConfig(): string | undefined {
    return this.live?.config;
  }

  records(): readonly ApplyRecord[] {
    return this.history;
  }

  current(): { generation: number; hash: string } {
    return { generation: this.generation, hash: this.live ? hashOf(this.live) : '' };
  }

  /** Would applying these services change the live files? */
  wouldChange(services: readonly ServiceState[]): boolean {
    return this.live === undefined || hashOf(this.render(services)) !== hashOf(this.live);
  }

  async apply(services: readonly ServiceState[], trigger: string, force = false): Promise<ApplyRecord> {
    const started = performance.now();
    const rendered = this.render(services);
    if (!force && this.live !== undefined && hashOf(rendered) === hashOf(this.live)) {
      return { generation: this.generation, kind: 'none', trigger, durationMs: 0, hash: hashOf(this.live), at: new Date().toISOString() };
    }
    await this.validate(services);
    const previous = this.live;
    this.writeLive(rendered);
    try {
      await this.haproxy.reload(reloadTimeout(rendered.config));
    } catch (err) {
      if (previous) this.writeLive(previous);
      this.log.error(`reload failed, previous config restored: ${(err as Error).message}`);
      throw err;
    }
    this.live = rendered;
    const record = this.record('reload', trigger, performance.now() - started, rendered);
    this.log.info(`applied generation ${record.generation} (${trigger}) in ${record.durationMs.toFixed(1)} ms`);
    return record;
  }

  private async validate(services: readonly ServiceState[]): Promise<void> {
    const candidate = this.render(services, this.paths.candidateDir);
    mkdirSync(this.paths.candidateDir, { recursive: true });
    for (const name of Object.keys(MAP_FILES) as MapName[]) {
      writeFileSync(path.join(this.paths.candidateDir, MAP_FILES[name]), candidate.maps[name]);
    }
    const file = path.join(this.paths.candidateDir, 'haproxy.cfg');
    writeFileSync(file, candidate.config);
    await validateConfig(this.haproxyBin, file);
  }

  private writeLive(files: Files): void {
    const atomic = (file: string, text: string) => {
      const tmp = `${file}.tmp`;
      writeFileSync(tmp, text);
      renameSync(tmp, file);
    };
    for (const name of Object.keys(MAP_FILES) as MapName[]) atomic(path.join(this.paths.stateDir, MAP_FILES[name]), files.maps[name]);
    atomic(this.paths.config, files.config);
  }

  private record(kind: ApplyKind, trigger: string, durationMs: number, files: Files): ApplyRecord {
    const record = { generation: ++this.generation, kind, trigger, durationMs, hash: hashOf(files), at: new Date().toISOString() };
    this.history.push(record);
    if (this.history.length > 50) this.history.shift();
    return record;
  }
}

export function hashOf(files: Files): string {
  const h = createHash('sha256').update(files.config);
  for (const name of Object.keys(MAP_FILES) as MapName[]) h.update(`\0${name}\0`).update(files.maps[name]);
  return h.digest('hex').slice(0, 16);
}

/** Parsing time grows with config size (~1.2 s at 2 MB on 2 cores); allow generously more. */
function reloadTimeout(config: string): number {
  return 10_000 + Math.ceil(config.length / 1000) * 10;
}
