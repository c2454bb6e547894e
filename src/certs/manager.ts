import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigRejectedError, ConsulUnavailableError, InvalidParamError } from '../errors.js';
import { repeatWithBackoff, retryUntilDone } from '../consul/kv.js';
import type { Logger } from '../util/log.js';
import { type CertInfo, orderCertNames, parseCertBundle } from './pem.js';
import type { ConsulCertStore } from './store.js';

export type CertSource = 'dir' | 'secrets' | 'kv';

interface Cert {
  readonly name: string;
  /** Normalised PEM (chain + key). Written to disk and the runtime API only, never shown. */
  readonly pem: string;
  readonly info: CertInfo;
  readonly source: CertSource;
}

/** What the manager needs from the applier (apply/applier.ts). */
export interface CertApplier {
  setCrtList(file: string | undefined): void;
  liveConfig(): string | undefined;
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

export interface CertRuntime {
  whenUp(): Promise<void>;
  adminCommand(command: string): Promise<string>;
}

export interface CertManagerOptions {
  /** Live certificate files, `<name>.pem`, mode 600 (STATE_DIR/certs-live). */
  readonly liveDir: string;
  /** The generated crt-list (STATE_DIR/crt-list.txt). */
  readonly crtList: string;
  /** PREFERRED_CERTIFICATE globs. */
  readonly preferred: readonly string[];
  readonly applier: CertApplier;
  readonly haproxy: CertRuntime;
  /** A validated reload of the current desired state (through the reconciler). */
  readonly reload: (trigger: string) => Promise<void>;
  readonly store: ConsulCertStore;
  readonly log: Logger;
  readonly waitSeconds: number;
}

/** The `certs` endpoint's entry (the original's names, metadata instead of `CertContent`). */
export interface CertListing {
  readonly ProxyServiceName: string;
  readonly Subject: string;
  readonly Domains: readonly string[];
  readonly NotAfter: string;
  readonly Fingerprint256: string;
  readonly Source: CertSource;
}

/**
 * The certificates HAProxy terminates TLS with. Sources: CERTS_DIR and `cert-*`/`cert_*` secrets at
 * start-up, and the fleet's Consul KV (`PUT cert`, `serviceCert`, other replicas). Each goes live
 * through the runtime API when the TLS bind already exists and the crt-list only grows at its end;
 * otherwise through a validated reload (the first certificate makes the TLS bind appear).
 */
export class CertManager {
  private certs = new Map<string, Cert>();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly ctrl = new AbortController();
  private watching: Promise<void> | undefined;
  private kvIndex = 0;
  private kvHash = '';

  constructor(private readonly o: CertManagerOptions) {}

  fileOf(name: string): string {
    return path.join(this.o.liveDir, `${name}.pem`);
  }

  /** Sorted by name; metadata only. */
  list(): CertListing[] {
    return [...this.certs.values()]
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((c) => ({
        ProxyServiceName: c.name,
        Subject: c.info.subject,
        Domains: c.info.domains,
        NotAfter: c.info.notAfter,
        Fingerprint256: c.info.fingerprint256,
        Source: c.source,
      }));
  }

  /**
   * Start-up, before HAProxy's first config is written: certificates from CERTS_DIR and the secrets
   * directory. A file that is not a certificate with its key is skipped with an error line.
   */
  loadLocal(certsDir: string, secretsDir: string): void {
    const found: Cert[] = [];
    const read = (dir: string, match: (f: string) => string | undefined, source: CertSource) => {
      if (!existsSync(dir)) return;
      for (const file of readdirSync(dir).sort()) {
        const name = match(file);
        const full = path.join(dir, file);
        if (name === undefined) continue;
        try {
          const parsed = parseCertBundle(file, readFileSync(full, 'utf8'));
          found.push({ name, pem: parsed.pem, info: parsed.info, source });
        } catch (err) {
          this.o.log.error(`skipping certificate ${full}: ${(err as Error).message}`);
        }
      }
    };
    const nameOf = (file: string) => {
      const base = file.replace(/\.pem$/, '');
      return /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(base) ? base : undefined;
    };
    read(certsDir, nameOf, 'dir');
    read(secretsDir, (f) => (/^cert[-_]/.test(f) ? nameOf(f) : undefined), 'secrets');
    for (const c of found) this.certs.set(c.name, c);
    if (this.certs.size > 0) {
      this.writeAll([...this.certs.values()]);
      this.o.log.info(`loaded ${this.certs.size} certificate${this.certs.size === 1 ? '' : 's'} at start-up: ${[...this.certs.keys()].join(', ')}`);
    }
  }

  /**
   * Start-up, before the fleet's first apply: the certificates stored in Consul, written to disk
   * without an apply of their own. Returns true when HAProxy already serves TLS from older files
   * and so needs a reload to see them (otherwise the restore's apply makes the TLS bind appear).
   */
  async restore(): Promise<boolean> {
    const result = await retryUntilDone(
      this.ctrl.signal,
      async () => {
        const stored = await this.o.store.list();
        this.kvIndex = stored.index;
        this.kvHash = stored.hash;
        const changed = this.fromStore(stored.certs).filter((c) => this.certs.get(c.name)?.pem !== c.pem);
        if (changed.length === 0) return false;
        return this.serialised(async () => {
          for (const c of changed) this.certs.set(c.name, c);
          this.writeAll(changed);
          this.o.log.info(`restored ${changed.length} certificate${changed.length === 1 ? '' : 's'} from Consul KV`);
          return this.bindLive();
        });
      },
      (err) => this.o.log.warn(`restoring certificates: ${err.message}; retrying`),
    );
    return result ?? false;
  }

  /**
   * `PUT cert` and `serviceCert`: validate (400 naming `parameter`), store in Consul KV, go live.
   * If it cannot go live here, the stored value is put back, so no replica applies it either.
   */
  async put(name: string, text: string, parameter: string): Promise<void> {
    const parsed = parseCertBundle(parameter, text);
    const cert: Cert = { name, pem: parsed.pem, info: parsed.info, source: 'kv' };
    await this.serialised(async () => {
      const previous = this.certs.get(name);
      await this.o.store.put(name, cert.pem).catch((err: unknown) => {
        throw err instanceof ConsulUnavailableError ? new ConsulUnavailableError(`${err.message}; the certificate was not changed`, err, err.transient) : err;
      });
      try {
        await this.install([cert], `certificate ${name}`);
      } catch (err) {
        await (previous?.source === 'kv' ? this.o.store.put(name, previous.pem) : this.o.store.delete(name)).catch((e: unknown) =>
          this.o.log.error(`could not roll back the stored certificate ${name}: ${(e as Error).message}`),
        );
        // `haproxy -c` refusing what node:crypto accepted (e.g. a key type HAProxy cannot use): the client's 400.
        if (err instanceof ConfigRejectedError) throw new InvalidParamError(parameter, `${parameter}: HAProxy refused the certificate: ${err.output.trim()}`);
        throw err;
      }
    });
  }

  startWatching(): void {
    this.watching = this.watch();
  }

  async stop(): Promise<void> {
    this.ctrl.abort();
    await this.watching;
  }

  /** Follows `<instance>/_dfp/certs/`: certificates stored by any replica go live here too. */
  private async watch(): Promise<void> {
    await repeatWithBackoff(
      this.ctrl.signal,
      () =>
        this.followStep().catch((err: unknown) => {
          this.kvIndex = 0;
          throw err;
        }),
      (err, retryInMs) => this.o.log.warn(`following shared certificates: ${err.message}; retrying in about ${retryInMs} ms`),
    );
  }

  private async followStep(): Promise<void> {
    const stored = await this.o.store.list(this.kvIndex, this.o.waitSeconds, this.ctrl.signal);
    if (stored.index < this.kvIndex) {
      this.kvIndex = 0;
      return;
    }
    if (stored.hash !== this.kvHash) {
      const certs = this.fromStore(stored.certs);
      await this.serialised(async () => {
        try {
          await this.install(certs, 'kv: certificates');
        } catch (err) {
          if (!(err instanceof ConfigRejectedError)) throw err;
          // One certificate HAProxy refuses must not hold back the others.
          for (const c of certs) {
            await this.install([c], `kv: certificate ${c.name}`).catch((e: unknown) =>
              this.o.log.error(`stored certificate ${c.name} cannot go live here: ${(e as Error).message}`),
            );
          }
        }
      });
      this.kvHash = stored.hash;
    }
    this.kvIndex = stored.index;
  }

  private fromStore(stored: readonly { name: string; pem: string }[]): Cert[] {
    const out: Cert[] = [];
    for (const s of stored) {
      try {
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/.test(s.name)) throw new Error('not a valid certificate name');
        const parsed = parseCertBundle(s.name, s.pem);
        out.push({ name: s.name, pem: parsed.pem, info: parsed.info, source: 'kv' });
      } catch (err) {
        this.o.log.error(`ignoring stored certificate ${this.o.store.prefix}${s.name}: ${(err as Error).message}`);
      }
    }
    return out;
  }

  /** Certificate changes one at a time. */
  private serialised<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(
      () => fn(),
      () => fn(),
    );
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Does the running HAProxy have the TLS bind on our crt-list? */
  private bindLive(): boolean {
    return (this.o.applier.liveConfig() ?? '').includes(` crt-list ${this.o.crtList} `);
  }

  private order(names: Iterable<string> = this.certs.keys()): string[] {
    return orderCertNames(names, this.o.preferred);
  }

  /** Writes these certificates' files and the crt-list, and points the renderer at it. */
  private writeAll(changed: readonly Cert[]): void {
    mkdirSync(this.o.liveDir, { recursive: true, mode: 0o700 });
    for (const c of changed) atomicWrite(this.fileOf(c.name), c.pem, 0o600);
    this.writeCrtList();
  }

  private writeCrtList(): void {
    if (this.certs.size === 0) {
      rmSync(this.o.crtList, { force: true });
      this.o.applier.setCrtList(undefined);
      return;
    }
    atomicWrite(this.o.crtList, `${this.order().map((n) => this.fileOf(n)).join('\n')}\n`, 0o644);
    this.o.applier.setCrtList(this.o.crtList);
  }

  /** Puts certificates live: runtime API when possible, else a validated reload; all or nothing. */
  private async install(certs: readonly Cert[], trigger: string): Promise<void> {
    const changed = certs.filter((c) => this.certs.get(c.name)?.pem !== c.pem);
    if (changed.length === 0) return;
    const before = new Map(this.certs);
    const oldFiles = new Map(changed.map((c) => [c.name, existsSync(this.fileOf(c.name)) ? readFileSync(this.fileOf(c.name), 'utf8') : undefined]));
    const oldOrder = this.order();
    for (const c of changed) this.certs.set(c.name, c);
    const newOrder = this.order();
    const names = changed.map((c) => c.name).join(', ');
    try {
      this.writeAll(changed);
      const runtime = await this.o.applier.exclusive(() => this.runtime(changed, before, oldOrder, newOrder));
      if (runtime) {
        this.o.log.info(`certificate${changed.length === 1 ? '' : 's'} ${names} live through the runtime API (no reload)`);
        return;
      }
      await this.o.reload(trigger);
      this.o.log.info(`certificate${changed.length === 1 ? '' : 's'} ${names} live after a reload`);
    } catch (err) {
      this.certs = before;
      for (const [name, text] of oldFiles) {
        if (text === undefined) rmSync(this.fileOf(name), { force: true });
        else atomicWrite(this.fileOf(name), text, 0o600);
      }
      this.writeCrtList();
      throw err;
    }
  }

  /**
   * The no-reload path: only when the TLS bind is live and the crt-list keeps its order (new
   * certificates land at its end; a reordering, e.g. a new preferred default, needs a reload).
   * Returns false to ask for a reload instead.
   */
  private async runtime(changed: readonly Cert[], before: ReadonlyMap<string, Cert>, oldOrder: readonly string[], newOrder: readonly string[]): Promise<boolean> {
    if (!this.bindLive() || before.size === 0) return false;
    if (oldOrder.some((n, i) => newOrder[i] !== n)) return false;
    await this.o.haproxy.whenUp();
    const byPosition = [...changed].sort((a, b) => newOrder.indexOf(a.name) - newOrder.indexOf(b.name));
    for (const c of byPosition) {
      const file = this.fileOf(c.name);
      const isNew = !before.has(c.name);
      const steps: [string, RegExp][] = [
        ...(isNew ? [[`new ssl cert ${file}`, /New empty certificate store/] as [string, RegExp]] : []),
        [`set ssl cert ${file} <<\n${c.pem.trimEnd()}\n`, /Transaction (created|updated)/],
        [`commit ssl cert ${file}`, /Success!/],
        ...(isNew ? [[`add ssl crt-list ${this.o.crtList} ${file}`, /Success!/] as [string, RegExp]] : []),
      ];
      for (const [command, ok] of steps) {
        let answer: string;
        try {
          answer = await this.o.haproxy.adminCommand(command);
        } catch (err) {
          answer = `socket error: ${(err as Error).message}`;
        }
        if (!ok.test(answer)) {
          // The command text is never logged: it may carry the key.
          const verb = command.split(' ', 3).join(' ');
          this.o.log.warn(`runtime API refused "${verb}" for ${c.name}: ${answer.trim().replace(/\n+/g, ' ')}; reloading instead`);
          await this.o.haproxy.adminCommand(`abort ssl cert ${file}`).catch(() => undefined);
          return false;
        }
      }
    }
    return true;
  }
}

function atomicWrite(file: string, text: string, mode: number): void {
  const tmp = `${file}.tmp`;
  rmSync(tmp, { force: true });
  writeFileSync(tmp, text, { mode });
  renameSync(tmp, file);
}
