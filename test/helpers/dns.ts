import dgram from 'node:dgram';

/**
 * A tiny DNS server for tests: answers A queries for the names in `records` (TTL 1 s), NXDOMAIN for
 * any other name. Enough for HAProxy's resolvers; nothing else.
 */
export async function startDns(records: Map<string, string>): Promise<{ port: number; queries: string[]; close: () => Promise<void> }> {
  const sock = dgram.createSocket('udp4');
  const queries: string[] = [];
  sock.on('message', (msg, rinfo) => {
    if (msg.length < 17) return;
    // The question: labels from byte 12, then QTYPE and QCLASS.
    const labels: string[] = [];
    let at = 12;
    while (at < msg.length && (msg[at] ?? 0) > 0) {
      const len = msg[at] ?? 0;
      labels.push(msg.subarray(at + 1, at + 1 + len).toString('ascii'));
      at += len + 1;
    }
    const questionEnd = at + 5;
    const qtype = msg.readUInt16BE(at + 1);
    const name = labels.join('.').toLowerCase();
    queries.push(name);
    const ip = qtype === 1 ? records.get(name) : undefined;
    const header = Buffer.alloc(12);
    header.writeUInt16BE(msg.readUInt16BE(0), 0); // id
    // QR, opcode 0, AA, RD copied; RA; RCODE 3 (NXDOMAIN) for unknown names, 0 otherwise.
    header.writeUInt16BE(0x8400 | (msg.readUInt16BE(2) & 0x0100) | 0x0080 | (records.has(name) ? 0 : 3), 2);
    header.writeUInt16BE(1, 4); // QDCOUNT
    header.writeUInt16BE(ip ? 1 : 0, 6); // ANCOUNT
    const question = msg.subarray(12, questionEnd);
    const answer = ip
      ? Buffer.concat([Buffer.from([0xc0, 0x0c]), Buffer.from([0, 1, 0, 1, 0, 0, 0, 1, 0, 4]), Buffer.from(ip.split('.').map(Number))])
      : Buffer.alloc(0);
    sock.send(Buffer.concat([header, question, answer]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve));
  return { port: sock.address().port, queries, close: () => new Promise<void>((resolve) => sock.close(() => resolve())) };
}
