import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ReplicaReport } from '../consul/replicas.js';
import { ConfigRejectedError, ConsulUnavailableError, DfpError, InvalidParamError } from '../errors.js';
import { changesSince, INCREMENTAL_LIMIT, type LogReader, type LogWake } from '../consul/change-log.js';
import { repeatWithBackoff, retryUntilDone } from '../consul/kv.js';
import { unifiedDiff } from '../util/diff.js';
import type { Logger } from '../util/log.js';
import { type CrtListEntry, crtListLine, readCrtList } from './crt-list.js';
import { type CertInfo, globToRegExp, orderCertNames, parseCertBundle } from './pem.js';
import { type CertReplicaResult, waitForCertOnReplicas } from './replicas.js';
import type { ConsulCertStore } from './store.js';

export type CertSource = 'dir' | 'secrets' | 'kv' | 'crt-list';

interface Cert {
  readonly name: string;
  /** Normalised PEM (chain + key). Written to disk and the runtime API only, never shown. */
  readonly pem: string;
  readonly info: CertInfo;
  readonly source: Exclude<CertSource, 'crt-list'>;
}

/** A line of CRT_LIST_PATH, served from a validated copy of its certificate file. */
interface Listed extends CrtListEntry {
  /** Its place in the crt-list order; cannot collide with a certificate name (those start with a letter or digit). */
  readonly key: string;
  /** The validated copy HAProxy loads. */
  readonly copy: string;
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
  /** The fleet's replica reports, for `distribute=true` / `wait=all` on `cert`. */
  readonly fleet?: {
    readonly prefix: string;
    readonly list: () => Promise<ReplicaReport[]>;
    /** REPLICA_WAIT_TIMEOUT, ms. */
    readonly timeoutMs: number;
  };
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

/** What a certificate change would do (a dry run), in the shape of the API's DryRunResult. */
export interface CertPlan {
  readonly kind: 'runtime' | 'reload' | 'none';
  /** crt-list.txt (paths only), and haproxy.cfg when the `:ssl` binds go. Never key material. */
  readonly diff: string;
  /** The runtime API commands, payloads left out. */
  readonly commands: readonly string[];
  readonly reloadBecause?: readonly string[];
}

export interface CertChangeOptions {
  readonly dryRun: boolean;
  /** `distribute=true` / `wait=all`: answer once every live replica has applied the change. */
  readonly waitAll: boolean;
}

export interface CertOutcome {
  readonly dryRun?: CertPlan;
  /** With waitAll: every live replica and whether it has applied the change. */
  readonly replicas?: readonly CertReplicaResult[];
  /** What a dry run would also do outside HAProxy (the Consul KV write or delete). */
  readonly note?: string;
}

interface Step {
  readonly command: string;
  /** The command as a dry run or a log line may show it: never the payload. */
  readonly shown: string;
  readonly ok: RegExp;
  readonly cert: string;
  readonly abortOnFailure: boolean;
}

interface Planned {
  readonly kind: 'runtime' | 'reload' | 'none';
  readonly reloadBecause: readonly string[];
  readonly removed: readonly string[];
  readonly changed: readonly Cert[];
  readonly steps: readonly Step[];
  readonly before: string;
  readonly after: string;
  readonly bindGoes: boolean;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

/**
 * The certificates HAProxy terminates TLS with. Sources: CERTS_DIR and `cert-*`/`cert_*` secrets at
 * start-up, CRT_LIST_PATH (an operator's crt-list, start-up only), and the fleet's Consul KV (`PUT
 * cert`, `serviceCert`, other replicas; `DELETE cert` removes). A change goes live through the
 * runtime API when the TLS bind already exists, the crt-list keeps its order (additions at its end)
 * and the default certificate stays; otherwise through a validated reload (the first certificate
 * makes the TLS bind appear, the last one's removal makes it go).
 */
export class CertManager implements LogReader {
  private certs = new Map<string, Cert>();
  /** Certificates from CERTS_DIR and the secrets directory: served again when a stored one of the same name is deleted. */
  private readonly local = new Map<string, Cert>();
  private listed: Listed[] = [];
  /** Stored certificates HAProxy refused here, with the content refused (not tried again until it changes); reported to the fleet. */
  private readonly refused = new Map<string, string>();
  private chain: Promise<unknown> = Promise.resolve();
  private readonly ctrl = new AbortController();
  private watching: Promise<void> | undefined;
  /** The newest read of the change log not handled yet; a newer one replaces it (each holds every ring). */
  private wake: LogWake | undefined;
  /** Why the next step reads every stored certificate (a wake asked for it, or a step failed). */
  private fullDue: string | undefined;
  /** A wake said Consul lost its data: the next step starts a new index space. */
  private lostDue = false;
  /** Resolves the wait of the follower for its next wake. */
  private woken: (() => void) | undefined;
  /** Hash of the last full read applied ('' after changes read by name). */
  private kvHash = '';
  /** Reads of the shared certificates since start: whole (the prefix) and by name (those the change log names). */
  readonly reads = { full: 0, logged: 0, certsFetched: 0 };
  /** The KV index of this replica's newest write: a snapshot read before it must not undo it. */
  private ownWrite = 0;
  /** Consul came back without its data: write the stored certificates this replica serves back. */
  private writeBack = false;
  private applied = 0;
  /** Called once the shared certificates up to a newer KV index are live here (publishes the replica report). */
  onApplied: () => void = () => undefined;

  constructor(private readonly o: CertManagerOptions) {}

  /** The KV index up to which every shared certificate is live here (or refused, see refusedNames). */
  get appliedIndex(): number {
    return this.applied;
  }

  /** Stored certificates HAProxy refused on this replica. */
  refusedNames(): string[] {
    return [...this.refused.keys()].sort();
  }

  fileOf(name: string): string {
    return path.join(this.o.liveDir, `${name}.pem`);
  }

  /** Sorted by name, then the CRT_LIST_PATH files in their order; metadata only. */
  list(): CertListing[] {
    const row = (name: string, info: CertInfo, source: CertSource): CertListing => ({
      ProxyServiceName: name,
      Subject: info.subject,
      Domains: info.domains,
      NotAfter: info.notAfter,
      Fingerprint256: info.fingerprint256,
      Source: source,
    });
    const files = new Map<string, Listed>();
    for (const e of this.listed) if (!files.has(e.file)) files.set(e.file, e);
    return [
      ...[...this.certs.values()].sort((a, b) => (a.name < b.name ? -1 : 1)).map((c) => row(c.name, c.info, c.source)),
      ...[...files.values()].map((e) => row(path.basename(e.file), e.info, 'crt-list')),
    ];
  }

  /**
   * Start-up, before HAProxy's first config is written: certificates from CERTS_DIR and the secrets
   * directory (a file that is not a certificate with its key is skipped with an error line), and the
   * operator's crt-list (CRT_LIST_PATH: any line that does not check out stops start-up).
   */
  loadLocal(certsDir: string, secretsDir: string, crtListPath?: string): void {
    const found: Cert[] = [];
    const read = (dir: string, match: (f: string) => string | undefined, source: Cert['source']) => {
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
      return NAME.test(base) ? base : undefined;
    };
    read(certsDir, nameOf, 'dir');
    read(secretsDir, (f) => (/^cert[-_]/.test(f) ? nameOf(f) : undefined), 'secrets');
    for (const c of found) {
      this.certs.set(c.name, c);
      this.local.set(c.name, c);
    }
    if (crtListPath !== undefined) this.loadCrtList(crtListPath);
    if (this.certs.size > 0 || this.listed.length > 0) {
      this.writeAll([...this.certs.values()]);
      if (this.certs.size > 0) {
        this.o.log.info(`loaded ${this.certs.size} certificate${this.certs.size === 1 ? '' : 's'} at start-up: ${[...this.certs.keys()].join(', ')}`);
      }
    }
  }

  /** CRT_LIST_PATH: validated lines, each certificate file copied (mode 600) to where HAProxy loads it. */
  private loadCrtList(file: string): void {
    const entries = readCrtList(file);
    const dir = path.join(this.o.liveDir, 'crt-list');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const copies = new Map<string, string>();
    this.listed = entries.map((e) => {
      let copy = copies.get(e.file);
      if (copy === undefined) {
        const base = path.basename(e.file).replace(/[^A-Za-z0-9._-]/g, '_');
        copy = path.join(dir, `${copies.size + 1}-${base}`);
        atomicWrite(copy, e.pem, 0o600);
        copies.set(e.file, copy);
      }
      return { ...e, key: `:crt-list:${e.line}`, copy };
    });
    this.o.log.info(`CRT_LIST_PATH ${file}: ${this.listed.length} line${this.listed.length === 1 ? '' : 's'} of ${copies.size} certificate file${copies.size === 1 ? '' : 's'} merged into the crt-list`);
  }

  /**
   * Start-up, before the fleet's first apply: the certificates stored in Consul, written to disk
   * without an apply of their own. Returns true when HAProxy already serves TLS from older files
   * and so needs a reload to see them (otherwise the restore's apply makes the TLS bind appear).
   */
  async restore(onRetry?: (err: Error) => void): Promise<boolean> {
    const result = await retryUntilDone(
      this.ctrl.signal,
      async () => {
        const stored = await this.o.store.list();
        this.kvHash = stored.hash;
        const changed = this.fromStore(stored.certs).filter((c) => this.certs.get(c.name)?.pem !== c.pem);
        const reload = await this.serialised(async () => {
          if (changed.length === 0) return false;
          for (const c of changed) this.certs.set(c.name, c);
          this.writeAll(changed);
          this.o.log.info(`restored ${changed.length} certificate${changed.length === 1 ? '' : 's'} from Consul KV`);
          return this.bindLive();
        });
        this.applied = stored.index;
        return reload;
      },
      (err) => {
        this.o.log.warn(`restoring certificates: ${err.message}; retrying`);
        onRetry?.(err);
      },
    );
    return result ?? false;
  }

  /**
   * `PUT cert` and `serviceCert`: validate (400 naming `parameter`), store in Consul KV, go live.
   * If it cannot go live here, the stored value is put back, so no replica applies it either.
   */
  async put(name: string, text: string, parameter: string, options: Partial<CertChangeOptions> = {}): Promise<CertOutcome> {
    const parsed = parseCertBundle(parameter, text);
    const cert: Cert = { name, pem: parsed.pem, info: parsed.info, source: 'kv' };
    const next = (from: ReadonlyMap<string, Cert>) => new Map(from).set(name, cert);
    if (options.dryRun) {
      return { dryRun: this.describe(this.plan(next(this.certs))), note: `would store ${this.o.store.prefix}${name} in Consul KV` };
    }
    const index = await this.serialised(async () => {
      const previous = this.certs.get(name);
      const landed = await this.o.store.put(name, cert.pem).catch((err: unknown) => {
        throw err instanceof ConsulUnavailableError ? new ConsulUnavailableError(`${err.message}; the certificate was not changed`, err, err.transient) : err;
      });
      this.ownWrite = Math.max(this.ownWrite, landed);
      try {
        await this.apply(next(this.certs), `certificate ${name}`);
      } catch (err) {
        await (previous?.source === 'kv' ? this.o.store.put(name, previous.pem) : this.o.store.delete(name)).then(
          (at) => {
            this.ownWrite = Math.max(this.ownWrite, at);
          },
          (e: unknown) => this.o.log.error(`could not roll back the stored certificate ${name}: ${(e as Error).message}`),
        );
        // `haproxy -c` refusing what node:crypto accepted (e.g. a key type HAProxy cannot use): the client's 400.
        if (err instanceof ConfigRejectedError) throw new InvalidParamError(parameter, `${parameter}: HAProxy refused the certificate: ${err.output.trim()}`);
        throw err;
      }
      this.refused.delete(name);
      return landed;
    });
    return options.waitAll ? { replicas: await this.waitForReplicas(name, index, 'put') } : {};
  }

  /**
   * `DELETE cert`: removes a stored certificate from Consul KV and from HAProxy (runtime API when
   * possible), so every replica drops it too. 404 naming certName when there is none; 400 for a
   * certificate of CERTS_DIR or the secrets directory, which only its file controls. A file of the
   * same name in CERTS_DIR or the secrets directory is served again. If it cannot be removed here,
   * the stored value is put back.
   */
  async delete(name: string, options: Partial<CertChangeOptions> = {}): Promise<CertOutcome> {
    const have = this.certs.get(name);
    if (have !== undefined && have.source !== 'kv') {
      const where = have.source === 'dir' ? 'CERTS_DIR' : 'the secrets directory (SECRETS_DIR)';
      throw new InvalidParamError('certName', `certificate ${name} comes from a file in ${where}, read at start-up: remove the file there and restart; DELETE removes only certificates stored through the API (PUT cert, serviceCert)`);
    }
    if (have === undefined && !(await this.o.store.has(name))) {
      throw new DfpError('DFP_ERR_NOT_FOUND', `no stored certificate named ${name}: nothing was changed`, { parameter: 'certName' });
    }
    const next = (from: ReadonlyMap<string, Cert>) => {
      const out = new Map(from);
      const local = this.local.get(name);
      if (local) out.set(name, local);
      else out.delete(name);
      return out;
    };
    if (options.dryRun) {
      const fallback = this.local.has(name) ? `; the file of the same name from ${this.local.get(name)?.source === 'dir' ? 'CERTS_DIR' : 'the secrets directory'} would be served again` : '';
      return { dryRun: this.describe(this.plan(next(this.certs))), note: `would delete ${this.o.store.prefix}${name} from Consul KV${fallback}` };
    }
    const index = await this.serialised(async () => {
      const previous = this.certs.get(name);
      const landed = await this.o.store.delete(name).catch((err: unknown) => {
        throw err instanceof ConsulUnavailableError ? new ConsulUnavailableError(`${err.message}; the certificate was not deleted`, err, err.transient) : err;
      });
      this.ownWrite = Math.max(this.ownWrite, landed);
      this.refused.delete(name);
      try {
        await this.apply(next(this.certs), `delete certificate ${name}`);
      } catch (err) {
        if (previous?.source === 'kv') {
          await this.o.store.put(name, previous.pem).then(
            (at) => {
              this.ownWrite = Math.max(this.ownWrite, at);
            },
            (e: unknown) => this.o.log.error(`could not put the stored certificate ${name} back: ${(e as Error).message}`),
          );
        }
        throw err;
      }
      return landed;
    });
    return options.waitAll ? { replicas: await this.waitForReplicas(name, index, 'delete') } : {};
  }

  private async waitForReplicas(name: string, index: number, action: 'put' | 'delete'): Promise<CertReplicaResult[]> {
    const fleet = this.o.fleet;
    if (!fleet) return [];
    return waitForCertOnReplicas(fleet.list, fleet.prefix, { name, index, action, timeoutMs: fleet.timeoutMs });
  }

  startWatching(): void {
    this.watching = this.watch();
  }

  async stop(): Promise<void> {
    this.ctrl.abort();
    await this.watching;
  }

  /**
   * The change log's follower (fleet.ts) hands on each read of the log here; this manager holds no
   * blocking query of its own. Wakes that arrive while a step runs are folded into one.
   */
  logged(wake: LogWake): void {
    if ('full' in wake) {
      this.fullDue ??= wake.full;
      if (wake.lost) this.lostDue = true;
    }
    this.wake = wake;
    this.woken?.();
  }

  /**
   * Follows the shared certificates: each read of the change log names the certificates stored or
   * deleted since the index applied here, and only those are read (one GET each). The whole
   * `<instance>/_dfp/certs/` prefix is read instead when the follower says so (start-up, its
   * periodic full read, a wait that ended with no change, Consul lost its data), when the log
   * cannot tell (a wrapped ring, an entry this version does not write), for many certificates at
   * once, and after a failed step.
   */
  private async watch(): Promise<void> {
    await repeatWithBackoff(
      this.ctrl.signal,
      async () => {
        const wake = await this.nextWake();
        if (wake === undefined) return;
        await this.followStep(wake).catch((err: unknown) => {
          // Tried again after the backoff, without waiting for the log to change, reading everything.
          this.fullDue ??= 'the last step failed';
          this.wake ??= wake;
          throw err;
        });
      },
      (err, retryInMs) => this.o.log.warn(`following shared certificates: ${err.message}; retrying in about ${retryInMs} ms`),
    );
  }

  /** The next wake; undefined once stopped. */
  private nextWake(): Promise<LogWake | undefined> {
    return new Promise((resolve) => {
      const take = () => {
        this.woken = undefined;
        this.ctrl.signal.removeEventListener('abort', take);
        const wake = this.wake;
        this.wake = undefined;
        resolve(this.ctrl.signal.aborted ? undefined : wake);
      };
      if (this.wake !== undefined || this.ctrl.signal.aborted) return take();
      this.woken = take;
      this.ctrl.signal.addEventListener('abort', take, { once: true });
    });
  }

  private async followStep(wake: LogWake): Promise<void> {
    if (this.lostDue) {
      // Consul lost its data (a rebuilt cluster, a dev agent): its next answer must not remove
      // every certificate this replica serves; they are written back instead. Indexes of writes
      // to the lost index space mean nothing in the new one.
      this.lostDue = false;
      this.ownWrite = 0;
      this.applied = 0;
      this.writeBack = true;
    }
    let full = this.fullDue;
    this.fullDue = undefined;
    let names: ReadonlySet<string> = new Set();
    if (full === undefined && 'log' in wake) {
      const verdict = changesSince(wake.log, this.applied, INCREMENTAL_LIMIT, 'certs');
      if ('full' in verdict) full = verdict.full;
      else names = verdict.certs;
    }
    if (full !== undefined) return this.readAll(wake.index, full);
    if (names.size === 0) {
      // The log named no certificate: every certificate change up to its index is live here.
      if (wake.index >= this.ownWrite) this.applied = Math.max(this.applied, wake.index);
      return;
    }
    const read = await this.o.store.get(names);
    this.reads.logged++;
    this.reads.certsFetched += names.size;
    const done = await this.serialised(async () => {
      // Read before this replica's own newest write: the next wake (due at once, the log moved) has it.
      if (wake.index < this.ownWrite) return false;
      const gone = [...read.gone].filter((name) => this.certs.get(name)?.source === 'kv');
      for (const name of read.gone) this.refused.delete(name);
      await this.follow(this.fromStore(read.certs), gone);
      return true;
    });
    if (!done) return;
    this.kvHash = '';
    this.settle(wake.index, true);
  }

  /** Reads every stored certificate and applies them (see watch); `index`: the log's, read before. */
  private async readAll(logIndex: number, why: string): Promise<void> {
    const stored = await this.o.store.list();
    this.reads.full++;
    this.o.log.debug(`read every shared certificate: ${why}`);
    // Read after the log: it holds every change the log names up to its index, and maybe more.
    const index = Math.max(logIndex, stored.index);
    const unchanged = stored.hash === this.kvHash;
    const done = await this.serialised(async () => {
      // Read before this replica's own newest write: the next wake (due at once, the log moved) has it.
      if (index < this.ownWrite) return false;
      const gone = [...this.certs.values()].filter((c) => c.source === 'kv' && !stored.names.has(c.name));
      if (this.writeBack && gone.length > 0) {
        this.o.log.warn(`Consul lost its state; writing back ${gone.length} certificate(s) this replica serves`);
        for (const c of gone) this.ownWrite = Math.max(this.ownWrite, await this.o.store.put(c.name, c.pem));
        return false;
      }
      if (unchanged) return true;
      for (const name of this.refused.keys()) if (!stored.names.has(name)) this.refused.delete(name);
      await this.follow(this.fromStore(stored.certs), gone.map((c) => c.name));
      return true;
    });
    this.writeBack = false;
    if (!done) {
      // Still due: the wake that comes with this replica's own write (logged) reads everything.
      this.fullDue ??= why;
      return;
    }
    this.kvHash = stored.hash;
    this.settle(index, !unchanged);
  }

  /**
   * Every shared certificate change up to `index` is live here. Published only when the
   * certificates changed: the index also moves with every logged spec change, and waiters compare
   * with the index of a certificate write, which always comes with a change read here.
   */
  private settle(index: number, changed: boolean): void {
    // Never backwards (a full read may have seen a hand edit past a later log read's index); a new
    // index space after Consul lost its data starts from 0 (followStep).
    if (index <= this.applied) return;
    this.applied = index;
    if (changed) this.onApplied();
  }

  /** Applies a snapshot of the shared certificates: one change, or one by one if HAProxy refuses it. */
  private async follow(certs: readonly Cert[], gone: readonly string[]): Promise<void> {
    const withStored = (from: ReadonlyMap<string, Cert>, list: readonly Cert[], removed: readonly string[]) => {
      const out = new Map(from);
      for (const name of removed) {
        const local = this.local.get(name);
        if (local) out.set(name, local);
        else out.delete(name);
      }
      for (const c of list) out.set(c.name, c);
      return out;
    };
    const changed = certs.filter((c) => this.certs.get(c.name)?.pem !== c.pem && this.refused.get(c.name) !== c.pem);
    if (changed.length === 0 && gone.length === 0) return;
    try {
      await this.apply(withStored(this.certs, changed, gone), changed.length > 0 || gone.length === 0 ? 'kv: certificates' : `kv: ${gone.join(', ')} deleted`);
      for (const c of changed) this.refused.delete(c.name);
    } catch (err) {
      if (!(err instanceof ConfigRejectedError)) throw err;
      // One certificate HAProxy refuses must not hold back the others.
      if (gone.length > 0) await this.apply(withStored(this.certs, [], gone), `kv: ${gone.join(', ')} deleted`);
      for (const c of changed) {
        await this.apply(withStored(this.certs, [c], []), `kv: certificate ${c.name}`).then(
          () => this.refused.delete(c.name),
          (e: unknown) => {
            this.refused.set(c.name, c.pem);
            this.o.log.error(`stored certificate ${c.name} cannot go live here: ${(e as Error).message}`);
          },
        );
      }
    }
  }

  private fromStore(stored: readonly { name: string; pem: string }[]): Cert[] {
    const out: Cert[] = [];
    for (const s of stored) {
      try {
        if (!NAME.test(s.name)) throw new Error('not a valid certificate name');
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

  /**
   * The crt-list order, by key: managed certificates matching PREFERRED_CERTIFICATE first (glob by
   * glob), then the CRT_LIST_PATH lines in their order, then the other managed certificates by name.
   * The first line is HAProxy's default certificate for names no certificate matches.
   */
  private order(certs: ReadonlyMap<string, Cert> = this.certs): string[] {
    const names = orderCertNames(certs.keys(), this.o.preferred);
    const globs = this.o.preferred.map(globToRegExp);
    const preferred = names.filter((n) => globs.some((g) => g.test(n))).length;
    return [...names.slice(0, preferred), ...this.listed.map((e) => e.key), ...names.slice(preferred)];
  }

  private lineOf(key: string): string {
    const e = this.listed.find((l) => l.key === key);
    return e ? crtListLine(e.copy, e.options, e.filters) : this.fileOf(key);
  }

  private crtListText(certs: ReadonlyMap<string, Cert> = this.certs): string {
    const keys = this.order(certs);
    return keys.length === 0 ? '' : `${keys.map((k) => this.lineOf(k)).join('\n')}\n`;
  }

  /** Writes these certificates' files and the crt-list, and points the renderer at it. */
  private writeAll(changed: readonly Cert[]): void {
    mkdirSync(this.o.liveDir, { recursive: true, mode: 0o700 });
    for (const c of changed) atomicWrite(this.fileOf(c.name), c.pem, 0o600);
    this.writeCrtList();
  }

  private writeCrtList(): void {
    const text = this.crtListText();
    if (text === '') {
      rmSync(this.o.crtList, { force: true });
      this.o.applier.setCrtList(undefined);
      return;
    }
    atomicWrite(this.o.crtList, text, 0o644);
    this.o.applier.setCrtList(this.o.crtList);
  }

  /**
   * What going from the current certificates to `next` takes: the runtime API when the TLS bind is
   * live and stays, the crt-list keeps its order (new lines at its end) and its first line (the
   * default certificate, which HAProxy refuses to delete at run time) stays; else a reload.
   */
  private plan(next: ReadonlyMap<string, Cert>): Planned {
    const removed = [...this.certs.keys()].filter((n) => !next.has(n));
    const changed = [...next.values()].filter((c) => this.certs.get(c.name)?.pem !== c.pem);
    const before = this.crtListText(this.certs);
    const after = this.crtListText(next);
    const base = { removed, changed, before, after, bindGoes: false };
    if (removed.length === 0 && changed.length === 0) return { ...base, kind: 'none', reloadBecause: [], steps: [] };
    const oldOrder = this.order(this.certs);
    const newOrder = this.order(next);
    const because: string[] = [];
    const bindGoes = this.bindLive() && newOrder.length === 0;
    if (!this.bindLive()) because.push(oldOrder.length === 0 ? 'the :ssl listeners appear (the first certificate)' : 'no running :ssl listener loads the crt-list yet');
    else if (bindGoes) because.push('the :ssl listeners go (no certificate left)');
    else {
      const kept = oldOrder.filter((k) => !removed.includes(k));
      if (kept.some((k, i) => newOrder[i] !== k)) because.push('the crt-list order changes (PREFERRED_CERTIFICATE or the name order puts a new certificate before others)');
      if (oldOrder[0] !== undefined && removed.includes(oldOrder[0])) because.push(`${oldOrder[0]} is the default certificate (first of the crt-list), which HAProxy does not delete at run time`);
    }
    const list = this.o.crtList;
    const steps: Step[] = [];
    for (const name of removed) {
      const file = this.fileOf(name);
      steps.push(
        { command: `del ssl crt-list ${list} ${file}`, shown: `del ssl crt-list ${list} ${file}`, ok: /deleted in crtlist/, cert: name, abortOnFailure: false },
        { command: `del ssl cert ${file}`, shown: `del ssl cert ${file}`, ok: /deleted!/, cert: name, abortOnFailure: false },
      );
    }
    for (const c of [...changed].sort((a, b) => newOrder.indexOf(a.name) - newOrder.indexOf(b.name))) {
      const file = this.fileOf(c.name);
      const isNew = !this.certs.has(c.name);
      if (isNew) steps.push({ command: `new ssl cert ${file}`, shown: `new ssl cert ${file}`, ok: /New empty certificate store/, cert: c.name, abortOnFailure: false });
      steps.push(
        {
          command: `set ssl cert ${file} <<\n${c.pem.trimEnd()}\n`,
          shown: `set ssl cert ${file} <<(certificate chain and private key, not shown)`,
          ok: /Transaction (created|updated)/,
          cert: c.name,
          abortOnFailure: true,
        },
        { command: `commit ssl cert ${file}`, shown: `commit ssl cert ${file}`, ok: /Success!/, cert: c.name, abortOnFailure: true },
      );
      if (isNew) steps.push({ command: `add ssl crt-list ${list} ${file}`, shown: `add ssl crt-list ${list} ${file}`, ok: /Success!/, cert: c.name, abortOnFailure: false });
    }
    return { ...base, bindGoes, kind: because.length > 0 ? 'reload' : 'runtime', reloadBecause: because, steps: because.length > 0 ? [] : steps };
  }

  /** A plan as a dry run shows it: paths and commands, never a certificate or a key. */
  private describe(p: Planned): CertPlan {
    const config = this.o.applier.liveConfig() ?? '';
    const withoutBinds = config
      .split('\n')
      .filter((l) => !l.includes(` crt-list ${this.o.crtList} `))
      .join('\n');
    return {
      kind: p.kind,
      diff: unifiedDiff(p.before, p.after, 'crt-list.txt') + (p.bindGoes ? unifiedDiff(config, withoutBinds, 'haproxy.cfg') : ''),
      commands: p.steps.map((s) => s.shown),
      ...(p.kind === 'reload' ? { reloadBecause: p.reloadBecause } : {}),
    };
  }

  /** Makes `next` the live certificates: runtime API when possible, else a validated reload; all or nothing. */
  private async apply(next: ReadonlyMap<string, Cert>, trigger: string): Promise<void> {
    const p = this.plan(next);
    if (p.kind === 'none') {
      this.certs = new Map(next);
      return;
    }
    const before = this.certs;
    const oldFiles = new Map(p.changed.map((c) => [c.name, existsSync(this.fileOf(c.name)) ? readFileSync(this.fileOf(c.name), 'utf8') : undefined]));
    const what = [...p.changed.map((c) => `${c.name} live`), ...p.removed.map((n) => `${n} removed`)].join(', ');
    const plural = p.changed.length + p.removed.length === 1 ? '' : 's';
    this.certs = new Map(next);
    try {
      this.writeAll(p.changed);
      const runtime = p.kind === 'runtime' && (await this.o.applier.exclusive(() => this.runtime(p.steps)));
      if (runtime) {
        this.o.log.info(`certificate${plural} ${what} through the runtime API (no reload)`);
      } else {
        await this.o.reload(trigger);
        this.o.log.info(`certificate${plural} ${what} after a reload`);
      }
    } catch (err) {
      this.certs = before;
      for (const [name, text] of oldFiles) {
        if (text === undefined) rmSync(this.fileOf(name), { force: true });
        else atomicWrite(this.fileOf(name), text, 0o600);
      }
      this.writeCrtList();
      throw err;
    }
    // HAProxy no longer uses them (a removal's file is deleted only once the change is live).
    for (const name of p.removed) rmSync(this.fileOf(name), { force: true });
  }

  /** Runs the steps; false (ask for a reload) as soon as HAProxy refuses one. */
  private async runtime(steps: readonly Step[]): Promise<boolean> {
    await this.o.haproxy.whenUp();
    for (const s of steps) {
      let answer: string;
      try {
        answer = await this.o.haproxy.adminCommand(s.command);
      } catch (err) {
        answer = `socket error: ${(err as Error).message}`;
      }
      if (!s.ok.test(answer)) {
        // `shown`, never `command`: the command may carry the key.
        this.o.log.warn(`runtime API refused "${s.shown.split(' ', 3).join(' ')}" for ${s.cert}: ${answer.trim().replace(/\n+/g, ' ')}; reloading instead`);
        if (s.abortOnFailure) await this.o.haproxy.adminCommand(`abort ssl cert ${this.fileOf(s.cert)}`).catch(() => undefined);
        return false;
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
