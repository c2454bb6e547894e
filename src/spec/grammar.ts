import { InvalidParamError } from '../errors.js';
import type { PathType } from './types.js';

/**
 * The allow-lists every request value passes before it can reach haproxy.cfg or a map file.
 * `haproxy -c` is the second line of defence, never the first. Each checker throws an
 * InvalidParamError naming the parameter exactly as the client sent it (index suffix included).
 */

export const MAX_NAME = 100;
export const MAX_PATH = 512;
export const MAX_ITEMS = 64;

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
// RFC 3986 path characters minus the quote and ';': nothing that HAProxy's config, map or runtime
// API parser gives a meaning (';' separates runtime API commands, and paths go into `add map`).
const LITERAL_PATH = /^[A-Za-z0-9\-._~!$&()*+=:@/%]+$/;
// Regular expressions: printable ASCII without whitespace, quotes, '#', ';' or backslash (HAProxy's
// config escapes). Use [.] instead of \. and [0-9] instead of \d.
const REGEX = /^[\x21\x24-\x26\x28-\x3a\x3c-\x5b\x5d-\x7e]+$/;
const PATH_LEN = /^[0-9]{1,5}(:[0-9]{1,5})?$/;

export function describe(value: string): string {
  return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
}

export function checkName(parameter: string, value: string): string {
  if (value.length > MAX_NAME) throw new InvalidParamError(parameter, `${parameter} is longer than ${MAX_NAME} characters`);
  if (!NAME.test(value)) {
    throw new InvalidParamError(
      parameter,
      `${parameter} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'; got ${describe(value)}`,
    );
  }
  return value;
}

export function checkPath(parameter: string, value: string, pathType: PathType): string {
  if (value.length > MAX_PATH) throw new InvalidParamError(parameter, `${parameter} is longer than ${MAX_PATH} characters`);
  // A leading '-' would be read by HAProxy as an ACL flag (`-f <file>` loads a file).
  if (value.startsWith('-')) throw new InvalidParamError(parameter, `${parameter} may not start with '-'; got ${describe(value)}`);
  switch (pathType) {
    case 'path_reg':
      if (!REGEX.test(value)) {
        throw new InvalidParamError(
          parameter,
          `${parameter} (path_reg) may not contain whitespace, control characters, quotes, '#' or backslashes; got ${describe(value)}`,
        );
      }
      return value;
    case 'path_len':
      if (!PATH_LEN.test(value)) throw new InvalidParamError(parameter, `${parameter} (path_len) must be N or N:M; got ${describe(value)}`);
      return value;
    default:
      if (!LITERAL_PATH.test(value)) {
        throw new InvalidParamError(
          parameter,
          `${parameter} may contain only URL path characters (no whitespace, control characters, quotes, '#' or backslashes); got ${describe(value)}`,
        );
      }
      if ((pathType === 'path' || pathType === 'path_beg' || pathType === 'path_dir') && !value.startsWith('/')) {
        throw new InvalidParamError(parameter, `${parameter} must start with '/' for pathType ${pathType}; got ${describe(value)}`);
      }
      return value;
  }
}

export function checkInt(parameter: string, value: string, min: number, max: number, what = 'an integer'): number {
  if (!/^[0-9]{1,10}$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new InvalidParamError(parameter, `${parameter} must be ${what} between ${min} and ${max}; got ${describe(value)}`);
  }
  return Number(value);
}

const TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

/** Go's ParseBool spellings, as the original accepted (requests and env alike); else undefined. */
export function parseBool(value: string): boolean | undefined {
  return TRUE.has(value) ? true : FALSE.has(value) ? false : undefined;
}

export function checkBool(parameter: string, value: string): boolean {
  const parsed = parseBool(value);
  if (parsed !== undefined) return parsed;
  throw new InvalidParamError(parameter, `${parameter} must be true or false; got ${describe(value)}`);
}

export function checkEnum<T extends string>(parameter: string, value: string, allowed: readonly T[]): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new InvalidParamError(parameter, `${parameter} must be one of ${allowed.join(', ')}; got ${describe(value)}`);
}

/** Splits a list on the separator, trimming items; an empty item is an error (`/a,,/b`). */
export function splitList(parameter: string, value: string, separator: string): string[] {
  const items = value.split(separator).map((s) => s.trim());
  if (items.some((s) => s === '')) throw new InvalidParamError(parameter, `${parameter} has an empty item; got ${describe(value)}`);
  if (items.length > MAX_ITEMS) throw new InvalidParamError(parameter, `${parameter} has more than ${MAX_ITEMS} items`);
  return items;
}

const DOMAIN = /^(\*\.?)?([a-z0-9]([a-z0-9-]{0,62})?\.)*[a-z0-9]([a-z0-9-]{0,62})?(:[0-9]{1,5})?$/;

/**
 * A serviceDomain / redirectFromDomain item: DNS labels, an optional leading `*.` wildcard and an
 * optional `:port` (ignored: the Host header is matched without its port). Lower-cased, like the
 * Host header before routing.
 */
export function checkDomain(parameter: string, value: string): string {
  const v = value.toLowerCase();
  if (v.length > 253 || !DOMAIN.test(v) || v === '*') {
    throw new InvalidParamError(parameter, `${parameter} must be a host name like a.com or *.a.com (letters, digits, '-' and '.'); got ${describe(value)}`);
  }
  // `*a.com` (the original's form) and `*.a.com` both mean "ends with .a.com" here.
  const host = v.replace(/:[0-9]+$/, '');
  return host.startsWith('*') && !host.startsWith('*.') ? `*.${host.slice(1)}` : host;
}

const TOKEN = /^[A-Za-z0-9!%&*+.^_|~-]{1,100}$/;

/** An HTTP header name (a token, without the characters HAProxy's config gives a meaning). */
export function checkHeaderName(parameter: string, value: string): string {
  if (!TOKEN.test(value)) throw new InvalidParamError(parameter, `${parameter}: ${describe(value)} is not a header name (letters, digits and -_.+!^|~&*%)`);
  return value;
}

// Printable ASCII; the renderer quotes it. `env(` would let a request read the proxy's environment.
const PRINTABLE = /^[\x20-\x7e]{1,512}$/;

/** A header value for add/set rules: printable, may use HAProxy `%[...]` fetches except env(). */
export function checkHeaderValue(parameter: string, value: string): string {
  if (!PRINTABLE.test(value)) throw new InvalidParamError(parameter, `${parameter}: header values must be printable ASCII of at most 512 characters; got ${describe(value)}`);
  if (/env\s*\(/i.test(value)) throw new InvalidParamError(parameter, `${parameter}: env() is not allowed in header values`);
  return value;
}

/** `Name value` (add/set header rules). */
export function checkHeaderItem(parameter: string, value: string): string {
  const m = /^([^ ]+) (.+)$/.exec(value.trim());
  if (!m?.[1] || !m[2]) throw new InvalidParamError(parameter, `${parameter} items must be "Name value"; got ${describe(value)}`);
  return `${checkHeaderName(parameter, m[1])} ${checkHeaderValue(parameter, m[2])}`;
}

/** `Name:Value` (serviceHeader: the route needs the header with that value). */
export function checkHeaderMatch(parameter: string, value: string): string {
  const i = value.indexOf(':');
  if (i <= 0) throw new InvalidParamError(parameter, `${parameter} items must be "Name:Value"; got ${describe(value)}`);
  const name = checkHeaderName(parameter, value.slice(0, i).trim());
  const v = value.slice(i + 1).trim();
  if (!/^[\x21\x23-\x5b\x5d-\x7e][\x20\x21\x23-\x5b\x5d-\x7e]{0,255}$/.test(v)) {
    throw new InvalidParamError(parameter, `${parameter}: header values to match must be printable, without quotes or backslashes; got ${describe(v)}`);
  }
  return `${name}:${v}`;
}

export function checkMethod(parameter: string, value: string): string {
  if (!/^[A-Z]{1,20}$/.test(value)) throw new InvalidParamError(parameter, `${parameter}: ${describe(value)} is not an HTTP method (upper-case letters)`);
  return value;
}

/** A User-Agent substring: printable, without quotes, backslashes or '$' (it is written quoted). */
export function checkUserAgent(parameter: string, value: string): string {
  if (!/^[\x20\x21\x23\x25-\x26\x28-\x5b\x5d-\x7e]{1,200}$/.test(value)) {
    throw new InvalidParamError(parameter, `${parameter} must be printable, without quotes, '$' or backslashes; got ${describe(value)}`);
  }
  return value;
}

const USER = /^[A-Za-z0-9._-]{1,64}$/;
// No whitespace, quotes, backslash or ',' (the list separator). '$' is allowed: crypt(3) hashes
// (usersPassEncrypted) are made of it, and the renderer's quote() escapes it (no env expansion).
const PASSWORD = /^[\x21\x23-\x26\x28-\x2b\x2d-\x5b\x5d-\x7e]{1,256}$/;

/** `name[:password]`. The password is secret: it is never part of an error message. */
export function checkUser(parameter: string, value: string): string {
  const i = value.indexOf(':');
  const name = i < 0 ? value : value.slice(0, i);
  if (!USER.test(name)) throw new InvalidParamError(parameter, `${parameter}: user names are letters, digits, '.', '_' and '-'; got ${describe(name)}`);
  if (i >= 0 && !PASSWORD.test(value.slice(i + 1))) {
    throw new InvalidParamError(parameter, `${parameter}: the password of ${name} is empty or has whitespace, quotes, ',' or backslashes`);
  }
  return value;
}

// Regular expressions for regsub: REGEX without ',' (the pair separator), ':' (the pairs separator).
const SEARCH = /^[\x21\x24-\x26\x28-\x2b\x2d-\x39\x3c-\x5b\x5d-\x7e]{1,256}$/;
const REPLACE = /^[\x21\x24-\x26\x28-\x2b\x2d-\x39\x3c-\x5b\x5d-\x7e]{0,256}$/;

/** A `search,replace` pair of reqPathSearchReplace; the replacement may be empty or use \1 refs. */
export function checkSearchReplace(parameter: string, value: string): string {
  const i = value.indexOf(',');
  const search = i < 0 ? value : value.slice(0, i);
  const replace = i < 0 ? '' : value.slice(i + 1);
  const rep = replace.replace(/\\[0-9]/g, '');
  if (!SEARCH.test(search) || search.startsWith('-') || !REPLACE.test(rep) || i < 0) {
    throw new InvalidParamError(
      parameter,
      `${parameter} must be search,replace pairs joined by ':' (no whitespace, quotes, '#', ';' or backslashes except \\1..\\9 in the replacement); got ${describe(value)}`,
    );
  }
  return value;
}

/** A MIME type for compressionType. */
export function checkMime(parameter: string, value: string): string {
  if (!/^[a-z0-9!#$&^_.+-]{1,64}\/[a-z0-9!#$&^_.+*-]{1,64}$/i.test(value) || value.includes('#') || value.includes('$')) {
    throw new InvalidParamError(parameter, `${parameter} items must be MIME types like text/html; got ${describe(value)}`);
  }
  return value;
}
