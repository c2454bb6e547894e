import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DfpError } from '../../src/errors.js';
import { Params } from '../../src/spec/params.js';
import { type ParseOptions, parseChangeOptions, parseReconfigure, parseRemove } from '../../src/spec/parse.js';
import { spec } from '../../src/spec/defaults.js';
import { specFromJson, specToJson } from '../../src/spec/from-json.js';

const opts = { separator: ',' };
const parse = (q: string, o: ParseOptions = opts) => parseReconfigure(new Params(new URLSearchParams(q)), o);

function rejects(q: string, code: string, parameter: string | undefined): void {
  assert.throws(
    () => parse(q),
    (err: unknown) => err instanceof DfpError && err.code === code && err.parameter === parameter,
    `${q} should fail with ${code} naming ${parameter}`,
  );
}

describe('reconfigure parameters', () => {
  it('the walkthrough request', () => {
    const r = parse('serviceName=books-ms&servicePath=/api/v1/books');
    assert.equal(r.kind, 'upsert');
    if (r.kind !== 'upsert') return;
    assert.deepEqual(r.spec, spec({ serviceName: 'books-ms', destinations: [{ servicePath: ['/api/v1/books'] }] }));
    assert.equal(r.rawServicePath, '/api/v1/books');
  });

  it('lists are trimmed and split on SEPARATOR; duplicates collapse', () => {
    const r = parse('serviceName=a&servicePath=/x , /y,/x');
    assert.deepEqual(r.kind === 'upsert' && r.spec.destinations[0]?.servicePath, ['/x', '/y']);
    const s = parse('serviceName=a&servicePath=/x;/y', { separator: ';' });
    assert.deepEqual(s.kind === 'upsert' && s.spec.destinations[0]?.servicePath, ['/x', '/y']);
  });

  it('empty values count as absent', () => {
    const r = parse('serviceName=a&servicePath=/x&port=&pathType=&aclName=');
    assert.ok(r.kind === 'upsert' && r.spec.aclName === 'a' && r.spec.destinations[0]?.port === undefined);
  });

  it('indexed destinations fall back to un-indexed values and drop index 0', () => {
    const r = parse('serviceName=a&port=8080&servicePath.1=/a&servicePath.2=/b&pathType.2=path');
    assert.ok(r.kind === 'upsert');
    if (r.kind !== 'upsert') return;
    assert.deepEqual(
      r.spec.destinations.map((d) => [d.index, d.port, d.servicePath, d.pathType]),
      [
        [1, 8080, ['/a'], 'path_beg'],
        [2, 8080, ['/b'], 'path'],
      ],
    );
  });

  it('index gaps and out-of-range indexes name the orphaned parameter (F9)', () => {
    rejects('serviceName=a&servicePath.1=/a&servicePath.3=/c', 'DFP_ERR_INVALID_PARAM', 'servicePath.3');
    rejects('serviceName=a&servicePath.1=/a&port.3=80', 'DFP_ERR_INVALID_PARAM', 'port.3');
    rejects('serviceName=a&servicePath.11=/a', 'DFP_ERR_INVALID_PARAM', 'servicePath.11');
    rejects('serviceName=a&servicePath.01=/a', 'DFP_ERR_INVALID_PARAM', 'servicePath.01');
  });

  it('booleans take exactly Go ParseBool spellings (F3)', () => {
    for (const v of ['1', 't', 'T', 'TRUE', 'true', 'True']) assert.ok(parse(`serviceName=a&servicePath=/x&skipCheck=${v}`).kind === 'upsert');
    rejects('serviceName=a&servicePath=/x&skipCheck=yes', 'DFP_ERR_INVALID_PARAM', 'skipCheck');
    assert.throws(() => parseChangeOptions(new Params(new URLSearchParams('distribute=on'))), (e: unknown) => e instanceof DfpError && e.parameter === 'distribute');
  });

  it('integers: digits only, within range', () => {
    rejects('serviceName=a&servicePath=/x&port=80.5', 'DFP_ERR_INVALID_PARAM', 'port');
    rejects('serviceName=a&servicePath=/x&port=-1', 'DFP_ERR_INVALID_PARAM', 'port');
    rejects('serviceName=a&servicePath=/x&port=%2080', 'DFP_ERR_INVALID_PARAM', 'port');
    rejects('serviceName=a&servicePath=/x&replicas=x', 'DFP_ERR_INVALID_PARAM', 'replicas');
  });

  it('replicas=0 is a remove, before any other validation', () => {
    assert.deepEqual(parse('serviceName=a&replicas=0&users=x'), { kind: 'remove', serviceName: 'a' });
    assert.equal(parse('serviceName=a&servicePath=/x&replicas=3').kind, 'upsert');
  });

  it('path grammar per pathType', () => {
    assert.ok(parse('serviceName=a&servicePath=.json&pathType=path_end').kind === 'upsert');
    assert.ok(parse('serviceName=a&servicePath=^/v[0-9]%2B/items$&pathType=path_reg').kind === 'upsert');
    assert.ok(parse('serviceName=a&servicePath=10:20&pathType=path_len').kind === 'upsert');
    rejects('serviceName=a&servicePath=json&pathType=path_beg', 'DFP_ERR_INVALID_PARAM', 'servicePath');
    rejects('serviceName=a&servicePath=10-20&pathType=path_len', 'DFP_ERR_INVALID_PARAM', 'servicePath');
    rejects('serviceName=a&servicePath=/a%5Cb&pathType=path_reg', 'DFP_ERR_INVALID_PARAM', 'servicePath');
    rejects(`serviceName=a&servicePath=/${'x'.repeat(600)}`, 'DFP_ERR_INVALID_PARAM', 'servicePath');
  });

  it('a parameter given twice is an error, even when one copy is empty', () => {
    assert.throws(() => new Params([['a', '1'], ['a', '2']]), DfpError);
    assert.throws(() => new Params([['a', ''], ['a', '2']]), DfpError);
    assert.throws(() => new Params([['a', '2'], ['a', '']]), DfpError);
  });

  it('raw configuration and not-yet-supported routing parameters are refused by name', () => {
    rejects('serviceName=a&servicePath=/x&consulTemplateFePath=/t', 'DFP_ERR_UNSUPPORTED_PARAM', 'consulTemplateFePath');
    rejects('serviceName=a&servicePath=/x&outboundHostname=a.com', 'DFP_ERR_INVALID_PARAM', 'port');
    rejects('serviceName=a&servicePath=/x&serviceGroup=g', 'DFP_ERR_UNSUPPORTED_PARAM', 'serviceGroup');
    rejects('serviceName=a&srcPort=9000&reqMode=sni', 'DFP_ERR_INVALID_PARAM', 'serviceDomain');
    rejects('serviceName=a&servicePath=/x&srcPort=9000&reqMode=tcp', 'DFP_ERR_INVALID_PARAM', 'servicePath');
  });

  it('srcPort must be a port HAProxy listens on (else the route could never be reached)', () => {
    const o = { separator: ',', listenerPorts: new Set([80, 8443]) };
    assert.equal(parse('serviceName=a&servicePath.1=/x&srcPort.1=8443', o).kind, 'upsert');
    assert.throws(
      () => parse('serviceName=a&servicePath.1=/x&srcPort.1=8444', o),
      (e: unknown) => e instanceof DfpError && e.code === 'DFP_ERR_INVALID_PARAM' && e.parameter === 'srcPort.1' && /BIND_PORTS/.test(e.message),
    );
  });

  it('httpsPort: srcPort and srcHttpsPort default to the listeners; each is checked against them, naming the one at fault', () => {
    const o = { separator: ',', listenerPorts: new Set([8080, 8443]), entryPorts: { plain: 8080, tls: 8443 } };
    const r = parse('serviceName=a&servicePath.1=/x&httpsPort.1=443', o);
    assert.equal(r.kind, 'upsert');
    const d = r.kind === 'upsert' ? r.spec.destinations[0] : undefined;
    assert.deepEqual([d?.httpsPort, d?.srcPort, d?.srcHttpsPort], [443, 8080, 8443]);
    const fails = (q: string, parameter: string, message: RegExp) =>
      assert.throws(
        () => parse(q, o),
        (e: unknown) => e instanceof DfpError && e.code === 'DFP_ERR_INVALID_PARAM' && e.parameter === parameter && message.test(e.message),
        q,
      );
    fails('serviceName=a&servicePath=/x&srcHttpsPort=8443', 'srcHttpsPort', /give httpsPort too/);
    fails('serviceName=a&servicePath=/x&httpsPort=443&srcHttpsPort=9', 'srcHttpsPort', /srcHttpsPort=9 is not a port HAProxy listens on/);
    // Without a plain listener the default 80 is not one either: the message says it is the default.
    assert.throws(
      () => parse('serviceName=a&servicePath=/x&httpsPort=443', { separator: ',', listenerPorts: new Set([8443]), entryPorts: { tls: 8443 } }),
      (e: unknown) => e instanceof DfpError && e.parameter === 'srcPort' && /srcPort=80 \(its default with httpsPort\)/.test(e.message),
    );
  });

  it('httpsPort in a stored spec (Consul KV): kept through JSON; without its entry ports it is refused', () => {
    const parsed = parse('serviceName=a&servicePath=/x&httpsPort=8443', { separator: ',', listenerPorts: new Set([80, 443]), entryPorts: { plain: 80, tls: 443 } });
    assert.equal(parsed.kind, 'upsert');
    if (parsed.kind !== 'upsert') return;
    const back = specFromJson(JSON.parse(specToJson(parsed.spec)));
    assert.deepEqual(back.destinations[0], parsed.spec.destinations[0]);
    const stored = JSON.parse(specToJson(parsed.spec)) as { destinations: Record<string, unknown>[] };
    const without = (key: string) => ({ ...stored, destinations: stored.destinations.map((d) => Object.fromEntries(Object.entries(d).filter(([k]) => k !== key))) });
    for (const key of ['srcPort', 'srcHttpsPort', 'httpsPort']) {
      assert.throws(() => specFromJson(without(key)), (e: unknown) => e instanceof DfpError && e.parameter === 'srcHttpsPort', key);
    }
  });

  it('reqMode=tcp: srcPort required and not an HTTP listener; HTTP-only fields refused by name, also from stored JSON', () => {
    const o = { separator: ',', listenerPorts: new Set([80, 443]) };
    const r = parse('serviceName=db&reqMode=tcp&srcPort=5432&checkTcp=true', o);
    assert.equal(r.kind, 'upsert');
    if (r.kind !== 'upsert') return;
    assert.deepEqual([r.spec.destinations[0]?.reqMode, r.spec.destinations[0]?.srcPort, r.spec.destinations[0]?.checkTcp], ['tcp', 5432, true]);
    assert.deepEqual(specFromJson(JSON.parse(specToJson(r.spec))), r.spec);
    const fails = (q: string, parameter: string) =>
      assert.throws(
        () => parse(q, o),
        (e: unknown) => e instanceof DfpError && e.code === 'DFP_ERR_INVALID_PARAM' && e.parameter === parameter,
        q,
      );
    fails('serviceName=db&reqMode=tcp', 'srcPort');
    fails('serviceName=db&reqMode=tcp&srcPort=80', 'srcPort');
    assert.throws(
      () => parse('serviceName=db&reqMode=tcp&srcPort=8080', { ...o, reservedPorts: new Map([[8080, "the API's port (PORT)"]]) }),
      (e: unknown) => e instanceof DfpError && e.parameter === 'srcPort' && /the API's port/.test(e.message),
    );
    fails('serviceName=db&reqMode=tcp&srcPort=5432&servicePathExclude=/x', 'servicePathExclude');
    fails('serviceName=db&reqMode=tcp&srcPort=5432&users=a:b', 'users');
    // Mixed: users apply to the http destination; an indexed HTTP-only field on the tcp one is named with its index.
    assert.equal(parse('serviceName=db&reqMode.1=tcp&port.1=5432&srcPort.1=5432&servicePath.2=/ui&users=a:b', o).kind, 'upsert');
    fails('serviceName=db&reqMode.1=tcp&port.1=5432&srcPort.1=5432&userAgent.1=curl&servicePath.2=/ui', 'userAgent.1');
    const stored = JSON.parse(specToJson(r.spec)) as { destinations: Record<string, unknown>[] };
    stored.destinations[0] = { ...stored.destinations[0], servicePath: ['/x'] };
    assert.throws(() => specFromJson(stored), (e: unknown) => e instanceof DfpError && e.parameter === 'servicePath');
  });

  it('discoveryType: consul or dns in any case (the original sent DNS); dns needs port and a DNS-able name', () => {
    const r = parse('serviceName=a&servicePath=/x&discoveryType=DNS&port=80');
    assert.equal(r.kind === 'upsert' && r.spec.discoveryType, 'dns');
    const c = parse('serviceName=a&servicePath=/x&discoveryType=Consul');
    assert.equal(c.kind === 'upsert' && c.spec.discoveryType, 'consul');
    for (const [q, parameter] of [
      ['serviceName=a&servicePath=/x&discoveryType=dns', 'port'],
      ['serviceName=a&servicePath.1=/x&port.1=80&servicePath.2=/y&discoveryType=dns', 'port'],
      ['serviceName=a.-b&servicePath=/x&discoveryType=dns&port=80', 'serviceName'],
      ['serviceName=a&servicePath=/x&discoveryType=swarm', 'discoveryType'],
      ['serviceName=a&servicePath=/x&discoveryType=dns&port=80&sessionType=sticky-server', 'sessionType'],
    ] as const) {
      assert.throws(() => parse(q), (e: unknown) => e instanceof DfpError && e.parameter === parameter, q);
    }
    // Stored specs are checked the same way.
    const stored = JSON.parse(specToJson((r as { spec: Parameters<typeof specToJson>[0] }).spec)) as { destinations: Record<string, unknown>[] };
    delete stored.destinations[0]?.port;
    assert.throws(() => specFromJson(stored), (e: unknown) => e instanceof DfpError && e.parameter === 'port');
  });

  it('outboundHostname: Swarm names with `_` pass; anything a resolver cannot ask for is refused', () => {
    const r = parse('serviceName=a&servicePath=/x&outboundHostname=Stack_Web.&port=80');
    assert.equal(r.kind === 'upsert' && r.spec.destinations[0]?.outboundHostname, 'stack_web');
    for (const bad of ['-a', 'a..b', 'a b', 'a/b', `${'x'.repeat(64)}.com`, '*.a.com', 'a.com:80']) {
      assert.throws(() => parse(`serviceName=a&servicePath=/x&port=80&outboundHostname=${encodeURIComponent(bad)}`), (e: unknown) => e instanceof DfpError && e.parameter === 'outboundHostname', bad);
    }
  });

  it('sticky sessions and DNS targets do not mix: 400 naming sessionType', () => {
    assert.throws(
      () => parse('serviceName=a&servicePath=/x&outboundHostname=a.test&port=80&sessionType=sticky-server'),
      (e: unknown) => e instanceof DfpError && e.parameter === 'sessionType',
    );
  });

  it('verifyClientSsl needs CA_FILE', () => {
    assert.equal(parse('serviceName=a&servicePath=/x&verifyClientSsl=true', { separator: ',', clientCa: true }).kind, 'upsert');
    assert.throws(
      () => parse('serviceName=a&servicePath.1=/x&verifyClientSsl.1=true', { separator: ',', clientCa: false }),
      (e: unknown) => e instanceof DfpError && e.parameter === 'verifyClientSsl.1' && /CA_FILE/.test(e.message),
    );
  });

  it('remove needs serviceName; aclName is optional', () => {
    assert.deepEqual(parseRemove(new Params([['serviceName', 'a']])), { serviceName: 'a' });
    assert.throws(() => parseRemove(new Params([])), (e: unknown) => e instanceof DfpError && e.parameter === 'serviceName');
    assert.throws(() => parseRemove(new Params([['serviceName', '../x']])), (e: unknown) => e instanceof DfpError && e.code === 'DFP_ERR_INVALID_PARAM');
  });
});
