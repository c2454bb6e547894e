// The image's HEALTHCHECK: healthy once the proxy has applied the state restored from Consul
// (`successfulinitreload` answers 503 until then). A plain script, so the image needs no curl.
import { readFileSync } from 'node:fs';
import path from 'node:path';

/** A setting as the proxy reads it: the secret file `dfp_<lower-case name>` first, then the env. */
function setting(name) {
  try {
    return readFileSync(path.join(process.env.SECRETS_DIR ?? '/run/secrets', `dfp_${name.toLowerCase()}`), 'utf8').replace(/[\r\n]+$/, '');
  } catch {
    const value = process.env[name];
    return value === undefined || value === '' ? undefined : value;
  }
}

const port = setting('PORT') ?? '8080';
const ip = setting('IP');
// The API listens on every address by default; ask it on loopback then.
const host = !ip || ip === '0.0.0.0' || ip === '::' ? '127.0.0.1' : ip.includes(':') ? `[${ip}]` : ip;
const url = `http://${host}:${port}/v1/docker-flow-proxy/successfulinitreload`;

// An API that requires credentials (API_TOKEN, or API_USER and API_PASSWORD) gets them.
const token = setting('API_TOKEN');
const user = setting('API_USER');
const password = setting('API_PASSWORD');
const headers = {};
if (token !== undefined) headers.authorization = `Bearer ${token}`;
else if (user !== undefined && password !== undefined) headers.authorization = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

try {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(4000) });
  await res.arrayBuffer();
  if (res.status !== 200) {
    console.error(`${url}: ${res.status}`);
    process.exit(1);
  }
} catch (err) {
  console.error(`${url}: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
