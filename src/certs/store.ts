import { type ConsulClient, consulAnswer, retryTransient } from '../consul/client.js';
import { readKvPrefix } from '../consul/kv.js';
import { base64, ChangeLogWriter, type TxnOp } from '../consul/log-writer.js';
import { ConsulUnavailableError } from '../errors.js';
import type { Logger } from '../util/log.js';

export interface StoredCert {
  readonly name: string;
  readonly pem: string;
}

/** GETs in flight at once when reading the certificates the change log names. */
const GET_CONCURRENCY = 4;

/** What a read of some certificates by name found. */
export interface NamedCerts {
  readonly certs: StoredCert[];
  /** Names whose key exists, valid or not: a damaged document is not a deleted certificate. */
  readonly names: Set<string>;
  /** Names whose key is gone. */
  readonly gone: Set<string>;
}

/**
 * Certificates shared by every proxy with the same PROXY_INSTANCE_NAME: one versioned JSON document
 * per certificate at `<instance>/_dfp/certs/<name>`, so a restarted proxy and every replica serve
 * them. (Anyone with KV read access on that prefix can read the keys: protect it with Consul ACLs.)
 * Every write and delete also puts the certificate's name into this replica's ring of the change
 * log (consul/change-log.ts), in the same transaction: that is how the other replicas learn of it.
 */
export class ConsulCertStore {
  readonly prefix: string;

  constructor(
    private readonly consul: ConsulClient,
    instanceName: string,
    private readonly log: Logger,
    /** The replica's ring of the change log, shared with the specs' store (ConsulSpecStore.logWriter). */
    private readonly logWriter = new ChangeLogWriter(consul, instanceName),
  ) {
    this.prefix = `${instanceName}/_dfp/certs/`;
  }

  /**
   * Stores a certificate; returns the KV index the write landed at. Written through `/v1/txn`,
   * which answers with the entry as written (a plain KV PUT answers only `true`), so the index is
   * this write's own: `distribute` waits for every replica to have applied it.
   */
  async put(name: string, pem: string): Promise<number> {
    const value = base64(JSON.stringify({ v: 1, pem }));
    return retryTransient(
      () => this.loggedUntilDone({ Verb: 'set', Key: `${this.prefix}${name}`, Value: value }, name, `the write of certificate ${name}`),
      10_000,
      (err) => this.log.warn(`storing certificate ${name}: ${err.message}; retrying`),
    );
  }

  /**
   * `op` on a certificate with its change log entry (log-writer.ts). The op has no check of its own,
   * so it always lands. Never Consul's answer text in an error: a refused transaction may echo the
   * value (the key).
   */
  private async loggedUntilDone(op: TxnOp, name: string, what: string): Promise<number> {
    const index = await this.logWriter.untilLogged(op, { cert: name }, what, true);
    if (index === undefined) throw new ConsulUnavailableError(`${what}: Consul refused it as stale`);
    return index;
  }

  /** Whether a certificate document exists under this name (valid or not). */
  async has(name: string): Promise<boolean> {
    const res = await this.consul.request(`/v1/kv/${this.prefix}${name}?keys`);
    if (res.status === 404) return false;
    if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body, false)} reading ${this.prefix}${name}`, undefined, res.status >= 500);
    return (JSON.parse(res.body) as string[]).includes(`${this.prefix}${name}`);
  }

  /** Deletes a certificate; returns the KV index of the delete (its log entry's: one transaction, one index). */
  async delete(name: string): Promise<number> {
    return retryTransient(() => this.loggedUntilDone({ Verb: 'delete', Key: `${this.prefix}${name}` }, name, `the removal of certificate ${name}`));
  }

  /** Reads these certificates again, one GET each (a few at a time). */
  async get(names: Iterable<string>): Promise<NamedCerts> {
    const queue = [...names];
    const out: NamedCerts = { certs: [], names: new Set(), gone: new Set() };
    await Promise.all(
      Array.from({ length: Math.min(GET_CONCURRENCY, queue.length) }, async () => {
        for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
          const key = `${this.prefix}${name}`;
          const res = await this.consul.request(`/v1/kv/${key}`);
          if (res.status === 404) {
            out.gone.add(name);
            continue;
          }
          if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body, false)} reading ${key}`, undefined, res.status >= 500);
          const e = (JSON.parse(res.body) as { Value: string | null }[])[0];
          out.names.add(name);
          const cert = this.parse(key, name, Buffer.from(e?.Value ?? '', 'base64').toString('utf8'));
          if (cert) out.certs.push(cert);
        }
      }),
    );
    return out;
  }

  private parse(key: string, name: string, value: string): StoredCert | undefined {
    try {
      const doc = JSON.parse(value) as { v?: number; pem?: unknown };
      if (typeof doc.pem !== 'string' || name === '' || name.includes('/')) throw new Error('not a certificate document');
      return { name, pem: doc.pem };
    } catch {
      this.log.error(`ignoring ${key}: not a stored certificate`);
      return undefined;
    }
  }

  /**
   * Every stored certificate. Bad values are skipped, but their names are in `names`: a damaged
   * document is not a deleted certificate. (Nothing blocks on this prefix: the change log wakes
   * its readers, certs/manager.ts.)
   */
  async list(): Promise<{ certs: StoredCert[]; names: Set<string>; index: number; hash: string }> {
    const read = await readKvPrefix(this.consul, this.prefix);
    if (read.folderError) this.log.debug(read.folderError);
    const certs: StoredCert[] = [];
    const names = new Set<string>();
    for (const e of read.entries) {
      const name = e.key.slice(this.prefix.length);
      names.add(name);
      const cert = this.parse(e.key, name, e.value);
      if (cert) certs.push(cert);
    }
    return { certs, names, index: read.index, hash: read.hash };
  }
}
