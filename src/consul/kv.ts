import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulUnavailableError } from '../errors.js';
import { type ConsulClient, consulAnswer } from './client.js';

/** One KV entry with its value decoded from base64. */
export interface KvValue {
  readonly key: string;
  readonly value: string;
  readonly modifyIndex: number;
}

export interface KvPrefix {
  readonly entries: readonly KvValue[];
  /** The index the read answered at: wait on it for the next change. */
  readonly index: number;
  /** Hash of the raw answer: equal hashes mean nothing under the prefix changed. */
  readonly hash: string;
  /** Why the prefix's folder key could not be created (see readKvPrefix), for the caller to log. */
  readonly folderError?: string;
}

/**
 * Every key under a prefix; a blocking read when `index` is given (it answers when something under
 * the prefix changes, or after `waitSeconds`). A missing prefix is an empty list, not an error.
 *
 * A blocking query on a prefix with no key under it waits on the nearest key tree node that does
 * exist, so it answers on every write anywhere below that node (measured on 1.8.7: an empty
 * `…/_dfp/certs/` woke on each of 20 writes to `…/_dfp/replicas/`; 0 with a key at the prefix).
 * A non-blocking read therefore creates the prefix's folder key (the key equal to the prefix, as
 * Consul's UI makes folders) when it is missing, and the folder key is never an entry.
 */
export async function readKvPrefix(consul: ConsulClient, prefix: string, index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<KvPrefix> {
  const query = index > 0 ? `&index=${index}&wait=${waitSeconds}s` : '';
  const res = await consul.request(`/v1/kv/${prefix}?recurse${query}`, {
    // Consul adds up to wait/16 of jitter to a blocking query.
    timeoutMs: index > 0 ? waitSeconds * 1062.5 + 5000 : 5000,
    ...(signal ? { signal } : {}),
  });
  if (res.status !== 200 && res.status !== 404) throw new ConsulUnavailableError(`Consul answered ${consulAnswer(res.status, res.body)} reading ${prefix}`);
  const raw = res.status === 404 ? [] : (JSON.parse(res.body) as { Key: string; Value: string | null; ModifyIndex: number }[]);
  const folderError = index === 0 && !raw.some((e) => e.Key === prefix) ? await createFolder(consul, prefix, signal) : undefined;
  return {
    entries: raw.filter((e) => e.Key !== prefix).map((e) => ({ key: e.Key, value: Buffer.from(e.Value ?? '', 'base64').toString('utf8'), modifyIndex: e.ModifyIndex })),
    index: res.index ?? 0,
    hash: createHash('sha256')
      .update(res.status === 404 ? '' : res.body)
      .digest('hex'),
    ...(folderError ? { folderError } : {}),
  };
}

/** Prefixes whose folder key Consul refused to create (an ACL without write access): asked once. */
const refusedFolders = new WeakMap<ConsulClient, Set<string>>();

/** Creates `prefix` as a key if it does not exist (cas=0 never overwrites); the reason when it cannot. */
async function createFolder(consul: ConsulClient, prefix: string, signal?: AbortSignal): Promise<string | undefined> {
  const refused = refusedFolders.get(consul) ?? new Set<string>();
  refusedFolders.set(consul, refused);
  if (refused.has(prefix)) return undefined;
  try {
    const res = await consul.request(`/v1/kv/${prefix}?cas=0`, { method: 'PUT', body: '', ...(signal ? { signal } : {}) });
    if (res.status === 200) return undefined;
    refused.add(prefix);
    return `Consul answered ${consulAnswer(res.status, res.body)} creating the folder key ${prefix}; not asked again`;
  } catch (err) {
    return `creating the folder key ${prefix}: ${(err as Error).message}`;
  }
}

/**
 * Runs `step` again and again until `signal` aborts: the loop of every follower of a blocking query.
 * A step that throws is reported and retried after a backoff with jitter (100 ms doubling to 5 s,
 * back to 100 ms after a step succeeds), so a Consul outage costs a few requests a second at most.
 */
export async function repeatWithBackoff(signal: AbortSignal, step: () => Promise<void>, onError: (err: Error, retryInMs: number) => void): Promise<void> {
  let backoff = 100;
  while (!signal.aborted) {
    try {
      await step();
      backoff = 100;
    } catch (err) {
      if (signal.aborted) return;
      onError(err as Error, backoff);
      await sleep(backoff * (0.5 + Math.random()), undefined, { signal }).catch(() => undefined);
      backoff = Math.min(backoff * 2, 5000);
    }
  }
}

/**
 * Tries `fn` until it succeeds or `signal` aborts (then undefined): start-up reads that must not
 * give up while Consul is still coming up. 200 ms doubling to 5 s between tries.
 */
export async function retryUntilDone<T>(signal: AbortSignal, fn: () => Promise<T>, onError: (err: Error) => void): Promise<T | undefined> {
  let delay = 200;
  while (!signal.aborted) {
    try {
      return await fn();
    } catch (err) {
      if (signal.aborted) return undefined;
      onError(err as Error);
      await sleep(delay, undefined, { signal }).catch(() => undefined);
      delay = Math.min(delay * 2, 5000);
    }
  }
  return undefined;
}
