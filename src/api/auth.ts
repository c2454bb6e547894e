import { createHash, timingSafeEqual } from 'node:crypto';
import type { ApiAuth } from '../config/settings.js';

/** Paths answered without credentials: fixed answers that tell nothing but "the API runs". */
export const OPEN_PATHS: ReadonlySet<string> = new Set(['/v1/docker-flow-proxy/ping', '/v1/test', '/v2/test']);

export type Verdict = 'ok' | 'missing' | 'wrong';

const REALM = 'docker-flow-proxy';

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/**
 * Equal-length digests compared in constant time: neither the time taken nor an early exit tells
 * an attacker how much of a guess was right, or how long the secret is.
 */
function same(given: string, expected: Buffer): boolean {
  return timingSafeEqual(digest(given), expected);
}

/**
 * The API's credentials check (API_USER/API_PASSWORD for HTTP basic, API_TOKEN for
 * `Authorization: Bearer`). Only digests of the secrets are kept.
 */
export class ApiAuthenticator {
  private readonly user: Buffer | undefined;
  private readonly password: Buffer | undefined;
  private readonly token: Buffer | undefined;
  /** The `WWW-Authenticate` challenges of a 401, one per accepted scheme. */
  readonly challenges: readonly string[];

  constructor(auth: ApiAuth) {
    this.user = auth.basic ? digest(auth.basic.user) : undefined;
    this.password = auth.basic ? digest(auth.basic.password) : undefined;
    this.token = auth.token === undefined ? undefined : digest(auth.token);
    this.challenges = [...(auth.basic ? [`Basic realm="${REALM}", charset="UTF-8"`] : []), ...(auth.token !== undefined ? [`Bearer realm="${REALM}"`] : [])];
  }

  /** Judges an `Authorization` header. A scheme that is not configured is `wrong`, like a bad secret. */
  check(header: string | undefined): Verdict {
    if (header === undefined || header.trim() === '') return 'missing';
    const m = /^\s*([A-Za-z]+)\s+(\S+)\s*$/.exec(header);
    if (!m) return 'wrong';
    const scheme = (m[1] ?? '').toLowerCase();
    const value = m[2] ?? '';
    if (scheme === 'bearer' && this.token) return same(value, this.token) ? 'ok' : 'wrong';
    if (scheme === 'basic' && this.user && this.password) {
      // RFC 7617: base64 of `user:password`, UTF-8; the user name ends at the first colon.
      const decoded = Buffer.from(value, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon < 0) return 'wrong';
      // Both compared every time: which half was wrong must not show in the timing either.
      const userOk = same(decoded.slice(0, colon), this.user);
      const passwordOk = same(decoded.slice(colon + 1), this.password);
      return userOk && passwordOk ? 'ok' : 'wrong';
    }
    return 'wrong';
  }
}
