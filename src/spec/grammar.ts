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
