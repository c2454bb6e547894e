// The image's HEALTHCHECK: healthy once the proxy has applied the state restored from Consul
// (`successfulinitreload` answers 503 until then). A plain script, so the image needs no curl.
const port = process.env.PORT || '8080';
const ip = process.env.IP;
// The API listens on every address by default; ask it on loopback then.
const host = !ip || ip === '0.0.0.0' || ip === '::' ? '127.0.0.1' : ip.includes(':') ? `[${ip}]` : ip;
const url = `http://${host}:${port}/v1/docker-flow-proxy/successfulinitreload`;

try {
  const res = await fetch(url, { signal: AbortSignal.timeout(4000) });
  await res.arrayBuffer();
  if (res.status !== 200) {
    console.error(`${url}: ${res.status}`);
    process.exit(1);
  }
} catch (err) {
  console.error(`${url}: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
