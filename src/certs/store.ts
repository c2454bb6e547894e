import { createHash } from 'node:crypto';
import { type ConsulClient, retryTransient } from '../consul/client.js';
import { ConsulUnavailableError } from '../errors.js';
import type { Logger } from '../util/log.js';

interface KvEntry {
  Key: string;
  Value: string | null;
  ModifyIndex: number;
}

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

  async put(name: string, pem: string): Promise<void> {
    const body = JSON.stringify({ v: 1, pem });
    await retryTransient(
      async () => {
        const res = await this.consul.request(`/v1/kv/${this.prefix}${name}`, { method: 'PUT', body });
        if (res.status !== 200 || res.body.trim() !== 'true') {
          throw new ConsulUnavailableError(`Consul refused to store certificate ${name}: ${res.status}`, undefined, res.status >= 500);
        }
      },
      10_000,
      (err) => this.log.warn(`storing certificate ${name}: ${err.message}; retrying`),
    );
  }

  async delete(name: string): Promise<void> {
    await retryTransient(async () => {
      const res = await this.consul.request(`/v1/kv/${this.prefix}${name}`, { method: 'DELETE' });
      if (res.status !== 200) throw new ConsulUnavailableError(`Consul refused to delete certificate ${name}: ${res.status}`, undefined, res.status >= 500);
    });
  }

  /** Every stored certificate (a blocking read when `index` is given). Bad values are skipped. */
  async list(index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<{ certs: StoredCert[]; index: number; hash: string }> {
    const query = index > 0 ? `&index=${index}&wait=${waitSeconds}s` : '';
    const res = await this.consul.request(`/v1/kv/${this.prefix}?recurse${query}`, {
      timeoutMs: index > 0 ? waitSeconds * 1062.5 + 5000 : 5000,
      ...(signal ? { signal } : {}),
    });
    if (res.status !== 200 && res.status !== 404) throw new ConsulUnavailableError(`Consul answered ${res.status} reading ${this.prefix}`);
    const entries = res.status === 404 ? [] : (JSON.parse(res.body) as KvEntry[]);
    const certs: StoredCert[] = [];
    for (const e of entries) {
      const name = e.Key.slice(this.prefix.length);
      try {
        const doc = JSON.parse(Buffer.from(e.Value ?? '', 'base64').toString('utf8')) as { v?: number; pem?: unknown };
        if (typeof doc.pem !== 'string' || name === '' || name.includes('/')) throw new Error('not a certificate document');
        certs.push({ name, pem: doc.pem });
      } catch {
        this.log.error(`ignoring ${e.Key}: not a stored certificate`);
      }
    }
    const hash = createHash('sha256').update(res.status === 404 ? '' : res.body).digest('hex');
    return { certs, index: res.index ?? 0, hash };
  }
}
