import { type ConsulClient, retryTransient } from '../consul/client.js';
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
    const read = await readKvPrefix(this.consul, this.prefix, index, waitSeconds, signal);
    const certs: StoredCert[] = [];
    for (const e of read.entries) {
      const name = e.key.slice(this.prefix.length);
      try {
        const doc = JSON.parse(e.value) as { v?: number; pem?: unknown };
        if (typeof doc.pem !== 'string' || name === '' || name.includes('/')) throw new Error('not a certificate document');
        certs.push({ name, pem: doc.pem });
      } catch {
        this.log.error(`ignoring ${e.key}: not a stored certificate`);
      }
    }
    return { certs, index: read.index, hash: read.hash };
  }
}
