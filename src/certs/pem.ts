import { createPrivateKey, X509Certificate } from 'node:crypto';
import { InvalidParamError } from '../errors.js';

/**
 * Certificates as HAProxy loads them: one PEM file with the certificate chain and its private key.
 * Everything here is pure; nothing ever puts key material into an error message or a log line.
 */

/** certName grammar: no `/`, no leading `.`, nothing HAProxy's crt-list or a file name could misread. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

export function checkCertName(parameter: string, raw: string | undefined): string {
  if (raw === undefined || raw === '') throw new InvalidParamError(parameter, `${parameter} is required`);
  if (!NAME.test(raw)) {
    throw new InvalidParamError(parameter, `${parameter} must start with a letter or digit and use only letters, digits and . _ - (at most 200 characters)`);
  }
  return raw;
}

/**
 * A certificate name derived from something else (serviceCert: the first serviceDomain, which may be
 * a wildcard such as `*.example.com`): made to fit the grammar instead of refused.
 */
export function certNameFrom(raw: string): string {
  const name = raw
    .replace(/^\*\./, 'wildcard.')
    .replace(/[^A-Za-z0-9._-]/g, '_')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, 200);
  return name === '' ? 'cert' : name;
}

/** What the `certs` endpoint shows: never key material. */
export interface CertInfo {
  readonly subject: string;
  readonly domains: readonly string[];
  readonly notAfter: string;
  readonly fingerprint256: string;
}

export interface ParsedCert {
  /** Normalised PEM: certificates first (leaf first, as sent), then the key; no blank lines. */
  readonly pem: string;
  readonly info: CertInfo;
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n[\s\S]*?-----END \1-----/g;

/**
 * Checks a PEM bundle: at least one certificate that parses, exactly one private key that parses
 * without a passphrase, and the key belongs to the first (leaf) certificate. Throws a 400 naming
 * `parameter` otherwise. The normalised text has no blank line, which the runtime API's payload
 * syntax (`<<` ... empty line) needs.
 */
export function parseCertBundle(parameter: string, text: string): ParsedCert {
  if (text.trim() === '') throw new InvalidParamError(parameter, `${parameter}: the body is empty; send the PEM certificate chain with its private key`);
  const certs: string[] = [];
  const keys: string[] = [];
  for (const m of text.matchAll(BLOCK)) {
    const block = m[0].replace(/\r/g, '');
    const kind = m[1] ?? '';
    if (kind === 'CERTIFICATE') certs.push(block);
    else if (kind.endsWith('PRIVATE KEY')) keys.push(block);
    else if (kind !== 'DH PARAMETERS' && kind !== 'EC PARAMETERS') {
      throw new InvalidParamError(parameter, `${parameter}: unexpected PEM block ${JSON.stringify(kind)}; send certificates and one private key`);
    }
  }
  if (certs.length === 0) throw new InvalidParamError(parameter, `${parameter}: no PEM certificate found`);
  if (keys.length !== 1) throw new InvalidParamError(parameter, `${parameter}: expected exactly one unencrypted PEM private key, found ${keys.length}`);
  let leaf: X509Certificate | undefined;
  for (const [i, block] of certs.entries()) {
    try {
      const x = new X509Certificate(block);
      if (i === 0) leaf = x;
    } catch {
      throw new InvalidParamError(parameter, `${parameter}: certificate ${i + 1} of the chain cannot be parsed`);
    }
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(keys[0] as string);
  } catch {
    // Never the library's message: it might quote the input.
    throw new InvalidParamError(parameter, `${parameter}: the private key cannot be parsed (encrypted keys are not supported)`);
  }
  if (!leaf?.checkPrivateKey(key)) throw new InvalidParamError(parameter, `${parameter}: the private key does not match the certificate`);
  const clean = (b: string) =>
    b
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '')
      .join('\n');
  return { pem: `${[...certs, keys[0] as string].map(clean).join('\n')}\n`, info: certInfo(leaf) };
}

export function certInfo(x: X509Certificate): CertInfo {
  const domains = (x.subjectAltName ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4));
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(x.subject)?.[1];
  return {
    subject: x.subject.replace(/\n/g, ', '),
    domains: domains.length > 0 ? domains : cn ? [cn] : [],
    notAfter: new Date(x.validTo).toISOString(),
    fingerprint256: x.fingerprint256,
  };
}

/** `*` any run of characters, `?` one character; everything else literal. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/**
 * The crt-list order: names matching PREFERRED_CERTIFICATE first (glob by glob), then the rest by
 * name. HAProxy serves the first entry to clients whose SNI matches no certificate.
 */
export function orderCertNames(names: Iterable<string>, preferred: readonly string[]): string[] {
  const rest = [...names].sort();
  const out: string[] = [];
  for (const glob of preferred) {
    const re = globToRegExp(glob);
    for (const n of rest.filter((x) => re.test(x))) {
      out.push(n);
      rest.splice(rest.indexOf(n), 1);
    }
  }
  return [...out, ...rest];
}
