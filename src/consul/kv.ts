import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ConsulUnavailableError } from '../errors.js';
import type { ConsulClient } from './client.js';

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
}

/**
 * Every key under a prefix; a blocking read when `index` is given (it answers when something under
 * the prefix changes, or after `waitSeconds`). A missing prefix is an empty list, not an error.
 */
export async function readKvPrefix(consul: ConsulClient, prefix: string, index = 0, waitSeconds = 300, signal?: AbortSignal): Promise<KvPrefix> {
  const query = index > 0 ? `&index=${index}&wait=${waitSeconds}s` : '';
  const res = await consul.request(`/v1/kv/${prefix}?recurse${query}`, {
    // Consul adds up to wait/16 of jitter to a blocking query.
    timeoutMs: index > 0 ? waitSeconds * 1062.5 + 5000 : 5000,
    ...(signal ? { signal } : {}),
  });
  if (res.status !== 200 && res.status !== 404) throw new ConsulUnavailableError(`Consul answered ${res.status} reading ${prefix}`);
  const raw = res.status === 404 ? [] : (JSON.parse(res.body) as { Key: string; Value: string | null; ModifyIndex: number }[]);
  return {
    entries: raw.map((e) => ({ key: e.Key, value: Buffer.from(e.Value ?? '', 'base64').toString('utf8'), modifyIndex: e.ModifyIndex })),
    index: res.index ?? 0,
    hash: createHash('sha256')
      .update(res.status === 404 ? '' : res.body)
      .digest('hex'),
  };
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
