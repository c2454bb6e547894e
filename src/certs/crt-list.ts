import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { SettingsError } from '../errors.js';
import { type CertInfo, parseCertBundle } from './pem.js';

/**
 * CRT_LIST_PATH: an operator's crt-list, read once at start-up and merged with the managed
 * certificates. Every line is checked against a closed grammar before anything of it reaches the
 * crt-list HAProxy loads; the first line that does not fit stops start-up with an error naming the
 * variable and the line. Error messages quote at most the offending word of a line, never a
 * certificate's content.
 *
 * A line (HAProxy's crt-list syntax, a subset):
 *
 *     <certificate file> [\[<option> ...\]] [[!]<SNI filter> ...]
 *
 * - the certificate file: a PEM file with the certificate chain and its unencrypted private key,
 *   absolute or relative to the crt-list's directory; what HAProxy loads is a validated copy;
 * - options: `alpn`, `ciphers`, `ciphersuites`, `curves`, `ecdhe`, `ssl-min-ver`, `ssl-max-ver`,
 *   `verify`, `ca-file`, `crl-file`, `no-ca-names`, `allow-0rtt`, each value in its own grammar;
 * - SNI filters: host names, `*.` wildcards, `!` to exclude.
 *
 * Blank lines and lines starting with `#` are skipped.
 */

export interface CrtListEntry {
  /** 1-based line number in the operator's file. */
  readonly line: number;
  /** The certificate file as resolved (absolute). */
  readonly file: string;
  /** Normalised PEM of the file (chain + key): what the validated copy holds. */
  readonly pem: string;
  readonly info: CertInfo;
  /** Option words, validated, in order (`alpn`, `h2,http/1.1`, `verify`, `none`, ...). */
  readonly options: readonly string[];
  /** SNI filters, validated and lower-cased. */
  readonly filters: readonly string[];
}

const VARIABLE = 'CRT_LIST_PATH';
const PATH = /^[A-Za-z0-9/_.+-]+$/;
const VERSIONS = ['SSLv3', 'TLSv1.0', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'];
const LABEL = '[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?';
const SNI = new RegExp(`^!?(\\*\\.)?(${LABEL}\\.)*${LABEL}$`);

/** Options with one value, and the grammar of that value. */
const VALUED: Record<string, { re: RegExp; what: string } | 'file'> = {
  alpn: { re: /^[A-Za-z0-9._/-]{1,64}(,[A-Za-z0-9._/-]{1,64})*$/, what: 'a comma list of protocol names, e.g. h2,http/1.1' },
  ciphers: { re: /^[A-Za-z0-9:!+@_.-]+$/, what: 'an OpenSSL cipher list' },
  ciphersuites: { re: /^[A-Za-z0-9:_]+$/, what: 'a TLS 1.3 cipher suite list, e.g. TLS_AES_128_GCM_SHA256' },
  curves: { re: /^[A-Za-z0-9:_-]+$/, what: 'a colon list of curve names' },
  ecdhe: { re: /^[A-Za-z0-9_-]+$/, what: 'a curve name' },
  'ssl-min-ver': { re: new RegExp(`^(${VERSIONS.join('|').replace(/\./g, '\\.')})$`), what: VERSIONS.join(', ') },
  'ssl-max-ver': { re: new RegExp(`^(${VERSIONS.join('|').replace(/\./g, '\\.')})$`), what: VERSIONS.join(', ') },
  verify: { re: /^(none|optional|required)$/, what: 'none, optional or required' },
  'ca-file': 'file',
  'crl-file': 'file',
};
const FLAGS = new Set(['no-ca-names', 'allow-0rtt']);

/** At most the start of a word, for an error message. */
function shown(word: string): string {
  return JSON.stringify(word.length > 60 ? `${word.slice(0, 60)}...` : word);
}

/** Reads and checks the operator's crt-list. Throws a SettingsError naming CRT_LIST_PATH and the line. */
export function readCrtList(file: string): CrtListEntry[] {
  const fail = (message: string) => new SettingsError(VARIABLE, `${file}: ${message}`);
  if (!existsSync(file) || !statSync(file).isFile()) throw fail('no such file');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw fail(`cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  // A certificate or key given by mistake: say so without quoting any of it.
  if (/-----BEGIN /.test(text)) throw fail('is a PEM file, not a crt-list (a crt-list names one certificate file per line)');
  return parseCrtList(text, path.dirname(file), file);
}

/** The grammar of readCrtList, on text already read; `baseDir` resolves relative paths. */
export function parseCrtList(text: string, baseDir: string, file = VARIABLE): CrtListEntry[] {
  const out: CrtListEntry[] = [];
  const bundles = new Map<string, { pem: string; info: CertInfo }>();
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const n = i + 1;
    const fail = (message: string) => new SettingsError(VARIABLE, `${file} line ${n}: ${message}`);
    const line = raw.replace(/\r$/, '');
    if (/[^\x20-\x7e\t]/.test(line)) throw fail('only printable ASCII characters are allowed');
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    if (/["'\\`$]/.test(trimmed)) throw fail('quotes, backslashes and $ are not allowed');
    const { head, options, tail } = splitOptions(trimmed, fail);
    if (!PATH.test(head)) throw fail(`the certificate file must be a path of letters, digits and / _ . + - (got ${shown(head)})`);
    const cert = resolvePath(baseDir, head);
    let bundle = bundles.get(cert);
    if (bundle === undefined) {
      if (!existsSync(cert) || !statSync(cert).isFile()) throw fail(`certificate file ${cert} does not exist`);
      try {
        bundle = parseCertBundle('certificate', readFileSync(cert, 'utf8'));
      } catch (err) {
        // parseCertBundle's messages never quote the input.
        throw fail(`certificate file ${cert}: ${(err as Error).message.replace(/^certificate: /, '')}`);
      }
      bundles.set(cert, bundle);
    }
    const filters = tail.map((f) => {
      const lower = f.toLowerCase();
      if (lower.length > 254 || !SNI.test(lower)) throw fail(`SNI filters must be host names, *.wildcards or !exclusions (got ${shown(f)})`);
      return lower;
    });
    out.push({ line: n, file: cert, pem: bundle.pem, info: bundle.info, options: checkOptions(options, baseDir, fail), filters });
  }
  return out;
}

function resolvePath(baseDir: string, p: string): string {
  return path.resolve(baseDir, p);
}

/** `<file> [opts] filters`: HAProxy allows the brackets attached to words (`[alpn h2]`). */
function splitOptions(line: string, fail: (m: string) => Error): { head: string; options: string[]; tail: string[] } {
  const open = line.indexOf('[');
  const close = line.indexOf(']');
  const words = (s: string) => s.split(/[ \t]+/).filter((w) => w !== '');
  if (open === -1) {
    if (close !== -1) throw fail('"]" without "["');
    const [head = '', ...tail] = words(line);
    return { head, options: [], tail };
  }
  if (close < open || line.indexOf('[', open + 1) !== -1 || line.indexOf(']', close + 1) !== -1) throw fail('at most one [options] block, with its brackets in order');
  const before = words(line.slice(0, open));
  if (before.length !== 1) throw fail('the [options] block must follow the certificate file');
  const options = words(line.slice(open + 1, close));
  if (options.length === 0) throw fail('empty [options] block');
  return { head: before[0] as string, options, tail: words(line.slice(close + 1)) };
}

function checkOptions(words: readonly string[], baseDir: string, fail: (m: string) => Error): string[] {
  const out: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const keyword = words[i] as string;
    if (FLAGS.has(keyword)) {
      out.push(keyword);
      continue;
    }
    const rule = VALUED[keyword];
    if (rule === undefined) {
      throw fail(`option ${shown(keyword)} is not accepted; accepted: ${[...Object.keys(VALUED), ...FLAGS].join(', ')}`);
    }
    const value = words[++i];
    if (value === undefined) throw fail(`option ${keyword} needs a value`);
    if (rule === 'file') {
      if (!PATH.test(value)) throw fail(`${keyword} must be a path of letters, digits and / _ . + - (got ${shown(value)})`);
      const resolved = resolvePath(baseDir, value);
      if (!existsSync(resolved) || !statSync(resolved).isFile()) throw fail(`${keyword} ${resolved} does not exist`);
      out.push(keyword, resolved);
    } else {
      if (!rule.re.test(value)) throw fail(`${keyword} must be ${rule.what} (got ${shown(value)})`);
      out.push(keyword, value);
    }
  }
  return out;
}

/** The crt-list line HAProxy loads for an entry, with `file` the validated copy. */
export function crtListLine(file: string, options: readonly string[], filters: readonly string[]): string {
  return [file, ...(options.length > 0 ? [`[${options.join(' ')}]`] : []), ...filters].join(' ');
}
