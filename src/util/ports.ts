import { readFileSync } from 'node:fs';
import net from 'node:net';

/**
 * A TCP port that was free on `host` a moment ago, picked at random below the kernel's ephemeral
 * range. A port the OS picks for listen(0) comes from that range, which is also where source ports
 * of outgoing connections come from, so between picking it and binding it another process's
 * connection could take it (seen in CI: HAProxy "cannot bind socket (Address already in use)").
 * Below the range only listeners compete, and random picks rarely meet.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const high = ephemeralStart();
  if (high - LOWEST > 1000) {
    for (let i = 0; i < 50; i++) {
      const port = LOWEST + Math.floor(Math.random() * (high - LOWEST));
      if (await isPortFree(port, host)) return port;
    }
  }
  return osPickedPort(host);
}

/** Below this, ports are left to the machine's own services. */
const LOWEST = 20_000;

function ephemeralStart(): number {
  try {
    const first = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(first) && first > 1024 ? first : 32_768;
  } catch {
    return 32_768;
  }
}

function osPickedPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}
