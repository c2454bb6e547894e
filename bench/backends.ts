import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * Benchmark backends in their own process (so the driver's event loop stays free): N HTTP servers
 * on 127.0.0.1 that answer with their name. Prints one JSON line with the ports, then serves until
 * killed.
 */
const count = Number(process.argv[2] ?? '4');
const ports: number[] = [];
for (let i = 0; i < count; i++) {
  const name = `b${i}`;
  const body = JSON.stringify({ instance: name });
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
  server.keepAliveTimeout = 30_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  ports.push((server.address() as AddressInfo).port);
}
process.stdout.write(`${JSON.stringify({ ports })}\n`);
