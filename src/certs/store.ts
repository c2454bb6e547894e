import { type ConsulClient, consulAnswer, retryTransient } from '../consul/client.js';
import { readKvPrefix } from '../consul/kv.js';
import { ConsulUnavailableError } from '../errors.js';
import type { Logger } from '../util/log.js';

export interface StoredCert {
  readonly name: string;
  readonly pem: string;
}

/**
 * Certificates shared by every proxy with the same PROXY_INSTANCE_NAME: one versioned JSON document
 * per certificate at `<instance>/_dfp/certs/<name>`, so a restarted proxy and every replica serve
 * them. (Anyone with KV read access on that prefix can read the keys: protect it with Consul ACLs.)
 */
export class ConsulCertStore {
  readonly prefix: string;

  constructor(
    private readonly consul: ConsulClient,
    instanceName: string,
    private readonly log: Logger,
  ) {
    this.prefix = `${instanceName}/_dfp/certs/`;
  }

  /**
   * Stores a certificate; returns the KV index the write landed at. Written through `/v1/txn`,
   * which answers with the entry as written (a plain KV PUT answers only `true`), so the index is
   * this write's own: `distribute` waits for every replica to have applied it.
   */
  async put(name: string, pem: string): Promise<number> {
    const value = Buffer.from(JSON.stringify({ v: 1, pem })).toString('base64');
    return retryTransient(
      async () => {
        const res = await this.consul.request('/v1/txn', { method: 'PUT', body: JSON.stringify([{ KV: { Verb: 'set', Key: `${this.prefix}${name}`, Value: value } }]) });
        const index = res.status === 200 ? (JSON.parse(res.body) as { Results?: { KV: { ModifyIndex: number } }[] }).Results?.[0]?.KV.ModifyIndex : undefined;
        // Never Consul's answer text here: a refused transaction may echo the value (the key).
        if (index === undefined) throw new ConsulUnavailableError(`Consul refused to store certificate ${name}: ${consulAnswer(res.status, res.body, false)}`, undefined, res.status >= 500);
        return index;
      },
      10_000,
      (err) => this.log.warn(`storing certificate ${name}: ${err.message}; retrying`),
    );
  }

  /** Whether a certificate document exists under this name (valid or not). */
  async has(name: string): Promise<boolean> {
    const res = await this.consul.request(`/v1/kv/${this.prefix}${name}?keys`);
    if (res.status === 404) return false;
    if (res.status !== 200) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body, false)} reading ${this.prefix}${name}`, undefined, res.status >= 500);
    return (JSON.parse(res.body) as string[]).includes(`${this.prefix}${name}`);
  }

  /** Deletes a certificate; returns a KV index at or after the delete (the prefix's, which includes it). */
  async delete(name: string): Promise<number> {
    return retryTransient(async () => {
      const res = await this.consul.request(`/v1/kv/${this.prefix}${name}`, { method: 'DELETE' });
      if (res.status !== 200) throw new ConsulUnavailableError(`Consul refused to delete certificate ${name}: ${consulAnswer(res.status, res.body, false)}`, undefined, res.status >= 500);
      // A KV DELETE answers without X-Consul-Index; the prefix's index includes the delete.
      const after = await this.consul.request(`/v1/kv/${this.prefix}?keys`);
      return after.index ?? 0;
    });
  }

  /**
   * Every stored certificate (a blocking read when `index` is given). Bad values are skipped, but
   * their names are in `names`: a damaged document is not a deleted certificate.
   */
  async list(index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<{ certs: StoredCert[]; names: Set<string>; index: number; hash: string }> {
    const read = await readKvPrefix(this.consul, this.prefix, index, waitSeconds, signal);
    if (read.folderError) this.log.warn(`${read.folderError}; the watch on the shared certificates answers on every KV write near it until the key exists`);
    const certs: StoredCert[] = [];
    const names = new Set<string>();
    for (const e of read.entries) {
      const name = e.key.slice(this.prefix.length);
      names.add(name);
      try {
        const doc = JSON.parse(e.value) as { v?: number; pem?: unknown };
        if (typeof doc.pem !== 'string' || name === '' || name.includes('/')) throw new Error('not a certificate document');
        certs.push({ name, pem: doc.pem });
      } catch {
        this.log.error(`ignoring ${e.key}: not a stored certificate`);
      }
    }
    return { certs, names, index: read.index, hash: read.hash };
  }
}
