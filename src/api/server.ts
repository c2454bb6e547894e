import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ApiAuth } from '../config/settings.js';
import { asDfpError, InvalidParamError, NotFoundError, UnauthorizedError } from '../errors.js';
import { ApiAuthenticator, OPEN_PATHS } from './auth.js';
import { checkCertName } from '../certs/pem.js';
import { Params } from '../spec/params.js';
import { type ChangeOptions, flag, type ParseOptions, parseChangeOptions, parseReconfigure, parseRemove } from '../spec/parse.js';
import type { Logger } from '../util/log.js';
import type { CertOutcome } from '../certs/manager.js';
import type { DryRunResult, ProxyCore } from './core.js';
export type { ChangeOptions };
import { serviceModel } from './model.js';
import { DASHBOARD_HEADERS, dashboardAsset } from '../dashboard/assets.js';
import { sendError, sendJson, sendText } from './respond.js';

const BASE = '/v1/docker-flow-proxy/';
const MAX_BODY = 64 * 1024;

/** The HTTP API on PORT, compatible with the original (any method, query string or form body). */
export class ApiServer {
  private readonly server: Server;
  private readonly auth: ApiAuthenticator | undefined;

  constructor(
    private readonly core: ProxyCore,
    private readonly parseOptions: ParseOptions,
    private readonly log: Logger,
    /** FILTER_PROXY_INSTANCE_NAME: the instance name requests must carry, when filtering. */
    private readonly instanceFilter: string | undefined = undefined,
    /** Told of every answered request (metrics): its endpoint (`reconfigure`, …), status and seconds. */
    private readonly observe: ((endpoint: string, status: number, seconds: number) => void) | undefined = undefined,
    /** API_USER/API_PASSWORD, API_TOKEN: undefined leaves the API open. */
    auth: ApiAuth | undefined = undefined,
  ) {
    this.auth = auth === undefined ? undefined : new ApiAuthenticator(auth);
    this.server = createServer((req, res) => {
      if (this.observe) {
        const started = performance.now();
        res.once('finish', () => this.observe?.(endpointOf(req.url), res.statusCode, (performance.now() - started) / 1000));
      }
      this.handle(req, res).catch((err: unknown) => {
        const e = asDfpError(err);
        // The path only: a query string may carry passwords (users=name:password).
        if (e.code === 'DFP_ERR_INTERNAL') this.log.error(`internal error on ${new URL(req.url ?? '/', 'http://localhost').pathname}: ${(err as Error).stack ?? String(err)}`);
        if (!res.headersSent) sendError(res, e);
        else res.destroy();
      });
    });
    this.server.keepAliveTimeout = 5000;
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as AddressInfo).port);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    // Before any routing, so every path, endpoints added later and unknown ones alike, is behind it.
    this.authenticate(req, url, res);
    if (url.pathname === '/v1/test' || url.pathname === '/v2/test') {
      return sendJson(res, 200, { Status: 'OK', Message: url.pathname === '/v1/test' ? 'Test v1' : 'Test v2' });
    }
    if (url.pathname === '/' || url.pathname === '/ui' || url.pathname.startsWith('/ui/')) return this.dashboard(req, url, res);
    if (url.pathname === '/metrics') {
      req.resume();
      const metrics = await this.core.metricsText?.();
      if (metrics === undefined) throw new NotFoundError('metrics are off (METRICS=false)');
      res.writeHead(200, { 'Content-Type': metrics.contentType, 'Content-Length': Buffer.byteLength(metrics.text) });
      res.end(metrics.text);
      return;
    }
    if (!url.pathname.startsWith(BASE)) throw new NotFoundError(`no such endpoint: ${url.pathname}`);
    const endpoint = url.pathname.slice(BASE.length);
    // The body of `cert` is the PEM itself, not a form: read before anything else consumes it.
    if (endpoint === 'cert') return this.cert(req, url, res);
    const params = new Params([...url.searchParams, ...(await formBody(req))]);
    switch (endpoint) {
      case 'ping':
        return sendJson(res, 200, { Status: 'OK', Message: '' });
      case 'successfulinitreload':
        return this.core.isReady()
          ? sendJson(res, 200, { Status: 'OK', Message: '' })
          : sendJson(res, 503, { Status: 'NOK', Message: 'start-up recovery has not been applied yet' });
      case 'reconfigure':
        return this.reconfigure(params, res);
      case 'remove': {
        const request = parseRemove(params);
        const options = parseChangeOptions(params);
        const outcome = await this.core.remove(request.serviceName, request.aclName, options);
        return sendJson(res, 200, {
          Status: 'OK',
          Message: outcome.dryRun
            ? 'dry run: nothing was changed'
            : !outcome.removed
              ? `${request.serviceName} was not configured; nothing changed`
              : options.distribute
                ? 'Distributed to all instances'
                : '',
          ServiceName: outcome.serviceName,
          ...(options.distribute ? { Distribute: true } : {}),
          ...dryRunFields(outcome.dryRun),
        });
      }
      case 'reload': {
        const recreate = flag(params, 'recreate');
        if (flag(params, 'fromListener')) {
          if (!this.core.notifyListener) throw new InvalidParamError('fromListener', 'fromListener needs LISTENER_ADDRESS, which is not set');
          // The listener re-sends every service as a reconfigure: no reload of our own.
          await this.core.notifyListener();
          return sendJson(res, 200, { Status: 'OK', Message: 'the Swarm Listener was asked to send every service again' });
        }
        await this.core.reload(recreate);
        return sendJson(res, 200, { Status: 'OK', Message: '' });
      }
      case 'config':
        if (params.get('type') === 'json') return sendJson(res, 200, Object.fromEntries(this.core.services().map((s) => [s.serviceName, { ...serviceModel(s), ...this.core.sourceOf?.(s.serviceName) }])));
        return sendText(res, 200, this.core.liveConfig());
      case 'certs':
        return sendJson(res, 200, { Status: 'OK', Message: '', Certs: this.core.certList() });
      case 'status':
        return sendJson(res, 200, { Status: 'OK', Message: '', ...(await this.core.status()) });
      case 'metrics': {
        // HAProxy's statistics CSV, as the original served it (from the stats page; here from the admin socket).
        if (!this.core.haproxyStats) throw new NotFoundError(`no such endpoint: ${url.pathname}`);
        const csv = await this.core.haproxyStats(flag(params, 'distribute'));
        res.writeHead(200, { 'Content-Type': 'text/csv; charset=utf-8', 'Content-Length': Buffer.byteLength(csv) });
        res.end(csv);
        return;
      }
      default:
        throw new NotFoundError(`no such endpoint: ${url.pathname}`);
    }
  }

  /**
   * With API_USER/API_PASSWORD or API_TOKEN set, a request without valid credentials ends here with
   * 401 and the accepted schemes in `WWW-Authenticate`; only the fixed answers of OPEN_PATHS are
   * open. Neither the answer nor the log carries what the client sent.
   */
  private authenticate(req: IncomingMessage, url: URL, res: ServerResponse): void {
    if (this.auth === undefined || OPEN_PATHS.has(url.pathname)) return;
    const verdict = this.auth.check(req.headers.authorization);
    if (verdict === 'ok') return;
    discard(req);
    res.setHeader('WWW-Authenticate', [...this.auth.challenges]);
    const from = req.socket.remoteAddress ?? 'unknown address';
    if (verdict === 'wrong') {
      this.log.warn(`API request to ${url.pathname} from ${from} refused: its credentials are not valid`);
      throw new UnauthorizedError('the credentials given are not valid');
    }
    this.log.debug(`API request to ${url.pathname} from ${from} refused: no credentials`);
    throw new UnauthorizedError('this API requires credentials: WWW-Authenticate names the schemes it accepts');
  }

  /**
   * The dashboard: `/ui/` is the page, `/ui/data` its JSON (polled), the rest its fixed files; `/`
   * and `/ui` send the browser to `/ui/`. Relative redirects and links, so the page also works
   * behind a reverse proxy that mounts the API under a path of its own.
   */
  private async dashboard(req: IncomingMessage, url: URL, res: ServerResponse): Promise<void> {
    req.resume();
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return sendJson(res, 405, { Status: 'NOK', Message: 'the dashboard answers GET and HEAD only', Code: 'DFP_ERR_METHOD_NOT_ALLOWED' });
    }
    if (url.pathname === '/' || url.pathname === '/ui') {
      res.writeHead(302, { Location: 'ui/', 'Content-Length': 0 });
      res.end();
      return;
    }
    const name = url.pathname.slice('/ui/'.length);
    if (name === 'data') {
      if (!this.core.dashboard) throw new NotFoundError(`no such endpoint: ${url.pathname}`);
      const text = JSON.stringify(await this.core.dashboard());
      res.writeHead(200, { ...DASHBOARD_HEADERS, 'Content-Type': 'application/json', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(text) });
      res.end(req.method === 'HEAD' ? undefined : text);
      return;
    }
    const asset = dashboardAsset(name);
    if (asset === undefined) throw new NotFoundError(`no such file of the dashboard: ${url.pathname}`);
    // no-cache: the browser asks again (cheaply) and never keeps a page of an older build.
    res.writeHead(200, { ...DASHBOARD_HEADERS, 'Content-Type': asset.contentType, 'Cache-Control': 'no-cache', 'Content-Length': asset.body.length });
    res.end(req.method === 'HEAD' ? undefined : asset.body);
  }

  /**
   * `PUT cert?certName=<name>`, body = PEM chain + private key; `DELETE cert?certName=<name>` (ours:
   * the original had no way to delete one). Both take `dryRun`, `distribute` and `wait`. Other
   * methods: 405.
   */
  private async cert(req: IncomingMessage, url: URL, res: ServerResponse): Promise<void> {
    if (req.method !== 'PUT' && req.method !== 'DELETE') {
      req.resume();
      res.setHeader('Allow', 'PUT, DELETE');
      return sendJson(res, 405, { Status: 'NOK', Message: 'cert accepts PUT (store) and DELETE (remove) only', Code: 'DFP_ERR_METHOD_NOT_ALLOWED' });
    }
    const params = new Params([...url.searchParams]);
    const name = checkCertName('certName', params.get('certName'));
    const options = parseChangeOptions(params);
    let outcome: CertOutcome;
    if (req.method === 'DELETE') {
      req.resume();
      outcome = await this.core.deleteCert(name, options);
      if (!outcome.dryRun) this.log.info(`certificate ${name} deleted`);
    } else {
      const pem = await rawBody(req, MAX_CERT_BODY);
      outcome = await this.core.putCert(name, pem, 'body', options);
      // Never the certificate or its key in the answer or the log.
      if (!outcome.dryRun) this.log.info(`certificate ${name} stored`);
    }
    return sendJson(res, 200, {
      Status: 'OK',
      Message: outcome.dryRun ? `dry run: nothing was changed${outcome.note ? `; ${outcome.note}` : ''}` : options.distribute ? 'Distributed to all instances' : '',
      CertName: name,
      ...(options.distribute ? { Distribute: true } : {}),
      ...(outcome.replicas ? { Replicas: outcome.replicas } : {}),
      ...dryRunFields(outcome.dryRun),
    });
  }

  private async reconfigure(params: Params, res: ServerResponse): Promise<void> {
    const options = parseChangeOptions(params);
    const request = parseReconfigure(params, this.parseOptions);
    if (this.instanceFilter !== undefined && options.proxyInstanceName !== this.instanceFilter) {
      // 200, so the Swarm Listener stops retrying; the message says why nothing happened (F17).
      return sendJson(res, 200, {
        Status: 'OK',
        Message: `ignored: proxyInstanceName ${JSON.stringify(options.proxyInstanceName ?? '')} is not ${this.instanceFilter} (FILTER_PROXY_INSTANCE_NAME)`,
        ServiceName: request.kind === 'upsert' ? request.spec.serviceName : request.serviceName,
      });
    }
    if (request.kind === 'remove') {
      const outcome = await this.core.remove(request.serviceName, request.aclName, options);
      return sendJson(res, 200, {
        Status: 'OK',
        Message: outcome.removed ? 'replicas=0: service removed' : `replicas=0: ${request.serviceName} was not configured; nothing changed`,
        ServiceName: request.serviceName,
        ...dryRunFields(outcome.dryRun),
      });
    }
    const outcome = await this.core.reconfigure(request.spec, options, request.serviceCert);
    return sendJson(res, 200, {
      Status: 'OK',
      Message: [
        ...(outcome.dryRun ? ['dry run: nothing was changed'] : []),
        ...(options.distribute && !outcome.dryRun ? ['Distributed to all instances'] : []),
        ...outcome.warnings,
      ].join('; '),
      ServiceName: request.spec.serviceName,
      ServicePath: request.rawServicePath,
      ...serviceModel(request.spec),
      Distribute: options.distribute,
      ...dryRunFields(outcome.dryRun),
    });
  }
}

const MAX_CERT_BODY = 1024 * 1024;

/** The endpoint a request is counted under: `reconfigure`, `status`, …; `/metrics` is `prometheus`, `/` and `/ui…` `dashboard`. */
function endpointOf(raw: string | undefined): string {
  const pathname = (raw ?? '/').split('?')[0] ?? '/';
  if (pathname === '/metrics') return 'prometheus';
  if (pathname === '/' || pathname === '/ui' || pathname.startsWith('/ui/')) return 'dashboard';
  if (pathname === '/v1/test' || pathname === '/v2/test') return 'test';
  return pathname.startsWith(BASE) ? pathname.slice(BASE.length) : 'other';
}

/** Reads a raw request body, bounded. */
async function rawBody(req: IncomingMessage, limit: number): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new InvalidParamError('body', `request body is larger than ${limit} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Lets an unauthenticated request's body go unread, so the connection can serve the next request;
 * a body past MAX_CERT_BODY closes the connection instead.
 */
function discard(req: IncomingMessage): void {
  let size = 0;
  req.on('data', (chunk: Buffer) => {
    size += chunk.length;
    if (size > MAX_CERT_BODY) req.socket.destroy();
  });
  req.resume();
}

function dryRunFields(d: DryRunResult | undefined): Record<string, unknown> {
  if (d === undefined) return {};
  return { DryRun: true, ApplyKind: d.kind, Diff: d.diff, Commands: d.commands, ...(d.reloadBecause ? { ReloadBecause: d.reloadBecause } : {}) };
}

async function formBody(req: IncomingMessage): Promise<[string, string][]> {
  const type = req.headers['content-type'] ?? '';
  if (!type.startsWith('application/x-www-form-urlencoded')) {
    req.resume();
    return [];
  }
  return [...new URLSearchParams(await rawBody(req, MAX_BODY))];
}
