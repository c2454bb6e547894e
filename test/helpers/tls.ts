import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { loadSettings } from '../../src/config/settings.js';
import { FlowProxy } from '../../src/proxy.js';
import { createLogger } from '../../src/util/log.js';
import { freePort } from '../../src/util/ports.js';
import { type TestProxy, tempDir, track } from './harness.js';

/**
 * TLS test helpers: certificates made with openssl, TLS handshakes and HTTPS requests to
 * 127.0.0.1 with a chosen SNI, the `cert` endpoint, and proxies with a TLS listener whose every log
 * line is kept (to check that no key material reaches it).
 */

export interface Pem {
  readonly cert: string;
  readonly key: string;
  readonly bundle: string;
  readonly fingerprint256: string;
}

export function makeCert(dir: string, cn: string, sans: string[] = [cn], bits = 2048): Pem {
  const base = path.join(dir, `${cn}-${Math.random().toString(36).slice(2, 8)}`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', `rsa:${bits}`, '-nodes', '-days', '30', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=${sans.map((s) => `DNS:${s}`).join(',')}`, '-keyout', `${base}.key`, '-out', `${base}.crt`],
    { stdio: 'ignore' },
  );
  const cert = readFileSync(`${base}.crt`, 'utf8');
  const key = readFileSync(`${base}.key`, 'utf8');
  return { cert, key, bundle: cert + key, fingerprint256: new X509Certificate(cert).fingerprint256 };
}

/** A certificate authority made with openssl, its files on disk (for Consul's `ca_file`, CONSUL_CACERT). */
export interface Ca {
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: string;
}

export function makeCa(dir: string, cn: string): Ca {
  const base = path.join(dir, `${cn}-${Math.random().toString(36).slice(2, 8)}`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', `/CN=${cn}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', `${base}.key`, '-out', `${base}.crt`],
    { stdio: 'ignore' },
  );
  return { certFile: `${base}.crt`, keyFile: `${base}.key`, cert: readFileSync(`${base}.crt`, 'utf8') };
}

/** A certificate signed by `ca`, for servers and clients alike; `sans` as openssl writes them (`IP:127.0.0.1`, `DNS:x`). */
export function signCert(dir: string, ca: Ca, cn: string, sans: string[]): { certFile: string; keyFile: string; cert: string; key: string } {
  const base = path.join(dir, `${cn}-${Math.random().toString(36).slice(2, 8)}`);
  execFileSync('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${base}.key`, '-out', `${base}.csr`], { stdio: 'ignore' });
  writeFileSync(`${base}.ext`, `subjectAltName=${sans.join(',')}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  execFileSync(
    'openssl',
    ['x509', '-req', '-in', `${base}.csr`, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-set_serial', String(Math.floor(Math.random() * 1e9)), '-days', '30', '-extfile', `${base}.ext`, '-out', `${base}.crt`],
    { stdio: 'ignore' },
  );
  return { certFile: `${base}.crt`, keyFile: `${base}.key`, cert: readFileSync(`${base}.crt`, 'utf8'), key: readFileSync(`${base}.key`, 'utf8') };
}

/** The key's base64 lines: none of them may appear anywhere outside the proxy. */
export function keyLines(p: Pem): string[] {
  return p.key.split('\n').filter((l) => l.length > 20 && !l.startsWith('-----'));
}

/** Fails if any key line of `pems` (or a PEM key header) appears in `text`. */
export function assertNoKey(text: string, pems: readonly Pem[], what: string): void {
  if (/PRIVATE KEY/.test(text)) throw new Error(`a PEM key header leaked into ${what}`);
  for (const pem of pems) for (const line of keyLines(pem)) if (text.includes(line)) throw new Error(`a key line leaked into ${what}`);
}

export interface Hello {
  readonly cn: string;
  readonly fingerprint256: string;
  readonly alpn: string | false;
}

export function hello(port: number, servername: string, alpn = ['h2', 'http/1.1'], maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<Hello> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, servername, rejectUnauthorized: false, ALPNProtocols: alpn, maxVersion }, () => {
      const peer = sock.getPeerCertificate();
      const out = { cn: String(peer.subject?.CN ?? ''), fingerprint256: peer.fingerprint256, alpn: sock.alpnProtocol ?? false };
      sock.end();
      resolve(out);
    });
    sock.setTimeout(5000, () => sock.destroy(new Error('TLS handshake timed out')));
    sock.on('error', reject);
  });
}

export function httpsGet(port: number, host: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, servername: host, path: urlPath, rejectUnauthorized: false, headers: { Host: host, Connection: 'close' }, agent: false },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

export interface CertAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
  readonly text: string;
}

/** The `cert` endpoint: `name` as certName (none when undefined), more query parameters in `query`. */
export async function certCall(p: TestProxy, method: string, name: string | undefined, body = '', query: Record<string, string> = {}): Promise<CertAnswer> {
  const params = new URLSearchParams({ ...(name === undefined ? {} : { certName: name }), ...query }).toString();
  const res = await fetch(`${p.api}/cert${params ? `?${params}` : ''}`, { method, ...(method === 'GET' || method === 'HEAD' || method === 'DELETE' ? {} : { body }) });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed, text };
}

export function putCert(p: TestProxy, name: string | undefined, body: string, method = 'PUT'): Promise<CertAnswer> {
  return certCall(p, method, name, body);
}

export type TlsProxy = TestProxy & { readonly tlsPort: number; readonly logs: string[] };

/**
 * Like harness startProxy, with a TLS listener and every log line (debug included) kept.
 * `NO_WAIT_READY=1`: return before the start-up restore is live (a proxy that cannot restore).
 */
export async function startTlsProxy(consulAddress: string, env: Record<string, string> = {}): Promise<TlsProxy> {
  const stateDir = env.STATE_DIR ?? tempDir();
  const httpPort = await freePort();
  const tlsPort = await freePort();
  const logs: string[] = [];
  const settings = loadSettings({
    CONSUL_ADDRESS: consulAddress,
    STATE_DIR: stateDir,
    PORT: '0',
    IP: '127.0.0.1',
    DEFAULT_PORTS: `${httpPort},${tlsPort}:ssl`,
    SECRETS_DIR: path.join(stateDir, 'no-secrets'),
    CONSUL_WATCH_WAIT: '30',
    ...env,
  });
  const proxy = await FlowProxy.start(
    settings,
    createLogger('debug', 'dfp', (l) => {
      logs.push(l);
    }),
  );
  track(proxy.haproxy.status().masterPid);
  if (env.NO_WAIT_READY !== '1') await proxy.whenReady();
  return {
    proxy,
    api: `http://127.0.0.1:${proxy.apiPort}/v1/docker-flow-proxy`,
    http: `http://127.0.0.1:${httpPort}`,
    httpPort,
    tlsPort,
    stateDir,
    logs,
    async stop() {
      await proxy.stop();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** The certificate keys stored in Consul KV for a proxy instance (the prefix's own folder key left out). */
export async function storedCertKeys(consulAddress: string, instance = 'docker-flow'): Promise<string[]> {
  const prefix = `${instance}/_dfp/certs/`;
  const res = await fetch(`${consulAddress}/v1/kv/${prefix}?keys`);
  return res.status === 404 ? [] : ((await res.json()) as string[]).filter((k) => k !== prefix);
}
