import { mkdirSync } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import type { ChangeOptions, DryRunResult, ProxyCore } from './api/core.js';
import { listReplicas, ReplicaPublisher, type ReplicaReport, readReplicas } from './consul/replicas.js';
import { ConsulSpecStore } from './consul/spec-store.js';
import { ConfigRejectedError, DfpError, FdLimitError, HaproxyUnavailableError, InvalidParamError, ReplicaUnreachableError, SettingsError } from './errors.js';
import { hasPrometheusExporter } from './haproxy/validate.js';
import { Fleet, specsHash } from './fleet.js';
import { ApiServer } from './api/server.js';
import { PrecheckBatch } from './apply/precheck-batch.js';
import { retryUntilDone } from './consul/kv.js';
import { type EnvService, envServices } from './sources/env-services.js';
import { SwarmListener } from './sources/swarm-listener.js';
import { specToJson } from './spec/from-json.js';
import type { ParseOptions } from './spec/parse.js';
import { IdleGc } from './util/idle-gc.js';
import { ConfigApplier } from './apply/applier.js';
import { CertManager, type CertListing, type CertOutcome } from './certs/manager.js';
import { certNameFrom, parseCertBundle } from './certs/pem.js';
import { ConsulCertStore } from './certs/store.js';
import type { Change } from './apply/reconciler.js';
import { Reconciler } from './apply/reconciler.js';
import { describeOp } from './apply/runtime.js';
import type { Settings } from './config/settings.js';
import { ConsulAgent } from './consul/agent.js';
import { ConsulClient } from './consul/client.js';
import { type AccessReport, checkConsulAccess } from './consul/access-check.js';
import { ConsulInstanceSource, knownToConsul } from './consul/instances.js';
import { checkModes } from './spec/modes.js';
import { ConsulWatcher } from './consul/watcher.js';
import type { InstanceSource } from './discovery/types.js';
import { HaproxyProcess } from './haproxy/process.js';
import { MAP_FILES, MAP_NAMES, type RenderSettings } from './render/haproxy-config.js';
import { consulServiceName, dnsTarget, type ServiceSpec } from './spec/types.js';
import { type DesiredState, EMPTY_STATE, serviceStates, withInstances, withoutService, withService, withServices } from './state/desired-state.js';
import { unifiedDiff } from './util/diff.js';
import { killQuietly } from './util/process.js';
import type { Logger } from './util/log.js';
import { Metrics, type MetricsSources } from './metrics/metrics.js';
import { buildDashboard } from './dashboard/data.js';
import type { DashboardData } from './dashboard/model.js';
import { parseShowStat } from './haproxy/stats.js';

/** What the renderer needs from the settings (everything but the map directory, which the applier picks). */
export function renderSettings(settings: Settings, adminSocket: string): Omit<RenderSettings, 'mapDir'> {
  const h = settings.http;
  return {
    listeners: settings.listeners,
    timeouts: settings.timeouts,
    connectionMode: settings.connectionMode,
    maxconn: settings.maxconn,
    drain: settings.drain,
    resolvers: settings.resolvers,
    debug: settings.debug,
    requestLog: settings.requestLog,
    adminSocket,
    serviceDomainAlgo: h.serviceDomainAlgo,
    httpsOnly: h.httpsOnly,
    users: h.users,
    usersPassEncrypted: h.usersPassEncrypted,
    userSecrets: h.userSecrets,
    crtList: undefined,
    enableH2: h.enableH2,
    caFile: h.caFile,
    extraGlobal: h.extraGlobal,
    ssl: h.ssl,
    extraFrontend: h.extraFrontend,
    compression: h.compression,
    stats: settings.stats,
    serverSlots: settings.serverSlots,
    prometheusPort: settings.prometheusPort,
  };
}

/** Files below STATE_DIR. Everything the proxy writes at run time lives here. */
export function statePaths(stateDir: string) {
  return {
    stateDir,
    config: path.join(stateDir, 'haproxy.cfg'),
    secrets: path.join(stateDir, 'credentials.cfg'),
    candidateDir: path.join(stateDir, 'candidate'),
    masterSocket: path.join(stateDir, 'haproxy-master.sock'),
    adminSocket: path.join(stateDir, 'haproxy-admin.sock'),
    pidFile: path.join(stateDir, 'haproxy.pid'),
    outputFifo: path.join(stateDir, 'haproxy-output.fifo'),
    consulDir: path.join(stateDir, 'consul'),
    /** Live certificate files (mode 600) and the crt-list the TLS binds load. */
    certsLive: path.join(stateDir, 'certs-live'),
    crtList: path.join(stateDir, 'crt-list.txt'),
  };
}

/** How long a cold start waits for the catalog model before it reads instances one service at a time. */
const MODEL_WAIT_MS = 5000;

/** Where the fleet's replicas publish their reports. */
function replicaPrefixOf(settings: Settings): string {
  return `${settings.proxyInstanceName}/_dfp/replicas/`;
}

function consulServices(state: DesiredState): Set<string> {
  return new Set([...state.services.values()].map(consulServiceName));
}

/**
 * The assembled proxy: sources (API) -> desired state -> discovery (Consul) -> render -> apply.
 */
export class FlowProxy implements ProxyCore {
  private ready = false;
  apiPort = 0;
  /** `performance.now()` when start() began (start-up's duration in the ready line). */
  private startedAt = 0;
  private fleet: Fleet | undefined;
  private publisher: ReplicaPublisher | undefined;
  private readyPromise: Promise<void> = Promise.resolve();
  private replicaId = '';
  /** TLS certificates (src/certs). */
  private certs: CertManager | undefined;
  /** The Swarm Listener (LISTENER_ADDRESS), pulled at start-up. */
  private listener: SwarmListener | undefined;
  /** Why the last try of the start-up restore failed, until it succeeds (told by assertReady's 503). */
  private restoreFailure: string | undefined;
  /** What the start-up check of the proxy's Consul permissions found (consul/access-check.ts). */
  accessCheck: Promise<AccessReport> = Promise.resolve({ acl: false, problems: [] });
  /** Aborted by stop(): start-up work that retries (the listener pull) ends with it. */
  private readonly lifetime = new AbortController();
  /** Services defined by DFP_SERVICE_* variables, by name: this replica's own, under the shared ones. */
  private fromEnv: ReadonlyMap<string, EnvService> = new Map();
  /** Gives the memory of a burst of changes back once it is over (util/idle-gc.ts). */
  readonly idleGc = new IdleGc();
  /** HAProxy's verdict on API changes, one `haproxy -c` per burst (apply/precheck-batch.ts). */
  private readonly prechecks = new PrecheckBatch(() => this.reconciler.snapshot(), {
    needsCheck: (state) => this.applier.needsPrecheck(serviceStates(state)),
    check: (state) => this.applier.precheck(serviceStates(state)),
  });

  private constructor(
    readonly settings: Settings,
    private readonly log: Logger,
    readonly haproxy: HaproxyProcess,
    private readonly applier: ConfigApplier,
    private readonly reconciler: Reconciler,
    private readonly instances: InstanceSource,
    private readonly watcher: ConsulWatcher,
    readonly consul: ConsulClient,
    private readonly store: ConsulSpecStore,
    private readonly localConsul: ConsulAgent | undefined,
    private api: ApiServer | undefined,
    /** The control plane's Prometheus metrics and the recent applies (metrics/metrics.ts). */
    readonly metrics: Metrics,
  ) {}

  static async start(settings: Settings, log: Logger): Promise<FlowProxy> {
    const startedAt = performance.now();
    const metrics = new Metrics(settings.metrics);
    // Services from the environment are checked before anything starts: a bad one stops start-up.
    const fromEnv = envServices(settings.serviceVariables, parseOptionsOf(settings), settings.defaultProtocol);
    const paths = statePaths(settings.stateDir);
    mkdirSync(paths.stateDir, { recursive: true });
    let localConsul: ConsulAgent | undefined;
    let haproxy: HaproxyProcess | undefined;
    try {
      let addresses = settings.consulAddresses;
      if (addresses.length === 0) {
        log.info('CONSUL_ADDRESS is not set: starting a local single-node Consul server');
        localConsul = await ConsulAgent.start({
          bin: settings.consulBin,
          mode: 'server',
          dataDir: paths.consulDir,
          ports: await ConsulAgent.persistentPorts(paths.consulDir),
          log: log.child('consul'),
        }).catch((err: unknown) => {
          // A container image built without Consul lands here: say which variable to set.
          if (((err as Error).cause as NodeJS.ErrnoException | undefined)?.code !== 'ENOENT') throw err;
          throw new SettingsError(
            'CONSUL_ADDRESS',
            `not set, and there is no Consul binary at ${settings.consulBin} (CONSUL_BIN) to start a local one: point CONSUL_ADDRESS at your Consul, or install Consul (npm run setup)`,
          );
        });
        addresses = [localConsul.address];
        log.info(`local Consul: CONSUL_ADDRESS=${localConsul.address} (data in ${paths.consulDir})`);
      }
      const consul = new ConsulClient(
        addresses,
        undefined,
        {
          watchConnections: settings.consulWatchConnections,
          requestConnections: settings.consulRequestConnections,
        },
        settings.consulAccess,
      );
      if (settings.consulAccess.tls && !addresses.some((a) => a.startsWith('https:'))) {
        log.warn('CONSUL_CACERT / CONSUL_CLIENT_CERT are set, but no Consul address is https://: they are not used');
      }
      if (metrics.enabled) consul.onResult = (budget, outcome) => metrics.consulRequest(budget === 'watch' ? 'blocking' : 'ordinary', outcome);
      if (settings.consulMaxWatches !== undefined) {
        log.warn('CONSUL_MAX_WATCHES is deprecated and ignored: discovery holds one query per Consul node, not per service (CONSUL_WATCH_CONNECTIONS bounds them)');
      }
      if (settings.consolidateAfter !== undefined) {
        log.warn('CONSOLIDATE_AFTER is ignored: scale events fill config-defined server slots, so no reload has to fold runtime servers into the config');
      }
      if (settings.prometheusPort !== undefined && !(await hasPrometheusExporter(settings.haproxyBin))) {
        throw new SettingsError('PROMETHEUS_PORT', `${settings.haproxyBin} was built without the Prometheus exporter (haproxy -vv lists no prometheus-exporter service); unset PROMETHEUS_PORT or use a build with USE_PROMEX=1`);
      }
      haproxy = new HaproxyProcess(settings.haproxyBin, paths, log.child('haproxy'));
      haproxy.onRestart = () => metrics.haproxyRestarted();
      const applier = new ConfigApplier(
        settings.haproxyBin,
        haproxy,
        renderSettings(settings, paths.adminSocket),
        paths,
        log.child('apply'),
        settings.spareBackends,
      );
      applier.onReloadFailure = (stage) => metrics.reloadFailed(stage);
      applier.onRuntimeFallback = () => metrics.runtimeFallback();
      // One ring of the change log for both stores: specs and certificates take its slots in turn.
      const store = new ConsulSpecStore(consul, settings.proxyInstanceName, log.child('kv'), settings.separator);
      // Certificates from CERTS_DIR and the secrets directory: in HAProxy's first config already.
      let reconciler: Reconciler | undefined;
      const certs = new CertManager({
        liveDir: paths.certsLive,
        crtList: paths.crtList,
        preferred: settings.http.preferredCertificates,
        applier,
        haproxy,
        store: new ConsulCertStore(consul, settings.proxyInstanceName, log.child('certs'), store.logWriter),
        reload: async (trigger) => {
          if (!reconciler) throw new DfpError('DFP_ERR_NOT_READY', 'the proxy is still starting');
          await reconciler.submit(trigger, (s) => s, { force: true });
        },
        log: log.child('certs'),
        fleet: {
          prefix: replicaPrefixOf(settings),
          list: () => listReplicas(consul, replicaPrefixOf(settings)),
          timeoutMs: settings.replicaWaitTimeout * 1000,
        },
      });
      // HAProxy outlives the proxy (SIGKILL, HAPROXY_ON_STOP=keep): take over the one still serving
      // this STATE_DIR, before the certificates of this start are written.
      const running = await haproxy.findRunning();
      const takenOver = running !== undefined && applier.takeOver(`master ${running} taken over from the previous run`);
      if (running !== undefined && !takenOver) await haproxy.stopLeftover(running, 'the live files it was started from are missing');
      certs.loadLocal(settings.http.certsDir, settings.secretsDir, settings.http.crtListPath);
      if (running !== undefined && takenOver) haproxy.adopt(running);
      else await startHaproxy(applier, haproxy, log);
      const source = new ConsulInstanceSource(consul, log.child('discovery'), settings.consulPassingOnly);
      // The watcher feeds the reconciler and follows the services the reconciler applied.
      const watcher = new ConsulWatcher(
        consul,
        source,
        (service, list, seenAt) => {
          reconciler
            ?.submit(`consul: ${service} has ${list.length} instance${list.length === 1 ? '' : 's'}`, (s) => withInstances(s, service, list), { source: 'consul-instances', seenAt })
            .catch((err: unknown) => {
              // Not lost: read the service again shortly (the watch would otherwise wait for its next change).
              log.warn(`applying the instances of ${service} failed: ${(err as Error).message}; reading them again in 1 s`);
              setTimeout(() => watcher.kick(service), 1000).unref();
            });
        },
        { waitSeconds: settings.consulWatchWait },
        log.child('watch'),
      );
      let proxy: FlowProxy | undefined;
      let synced: DesiredState['services'] | undefined;
      reconciler = new Reconciler(
        applier,
        log.child('reconcile'),
        (state) => {
          // Scale events keep the very map of specs: the services followed are the same.
          if (state.services !== synced) watcher.sync(consulServices(state));
          synced = state.services;
          proxy?.publisher?.publish();
          proxy?.idleGc.touch();
        },
        metrics,
      );
      // HAProxy restarted from the last validated files: apply the desired state again (a reload).
      applier.afterRecovery = () => {
        reconciler
          ?.submit('re-apply after HAProxy restarted from the last good config', (s) => s, { force: true })
          .catch((err: unknown) => log.error(`re-applying after recovery failed: ${(err as Error).message}`));
      };
      proxy = new FlowProxy(settings, log, haproxy, applier, reconciler, source, watcher, consul, store, localConsul, undefined, metrics);
      proxy.startedAt = startedAt;
      metrics.bind(proxy.metricsSources());
      proxy.certs = certs;
      proxy.fromEnv = new Map(fromEnv.map((e) => [e.spec.serviceName, e]));
      if (settings.listenerUrl) proxy.listener = new SwarmListener(settings.listenerUrl, log.child('listener'));
      if (fromEnv.length > 0) log.info(`${fromEnv.length} service${fromEnv.length === 1 ? '' : 's'} from the environment: ${fromEnv.map((e) => `${e.spec.serviceName} (${e.prefix}*)`).join(', ')}`);
      certs.onApplied = () => proxy?.publisher?.publish();
      applier.onMaterialized = () => proxy?.publisher?.publish();
      const api = new ApiServer(
        proxy,
        parseOptionsOf(settings),
        log.child('api'),
        settings.filterProxyInstanceName ? settings.proxyInstanceName : undefined,
        (endpoint, status, seconds) => metrics.apiRequest(endpoint, status, seconds),
        settings.apiAuth,
      );
      proxy.apiPort = await api.listen(settings.apiPort, settings.apiHost);
      proxy.api = api;
      log.info(`API listening on ${settings.apiHost}:${proxy.apiPort}; HAProxy binds ${settings.listeners.map((l) => `${l.port}${l.ssl ? ':ssl' : ''}`).join(', ')}`, {
        apiPort: proxy.apiPort,
        binds: settings.listeners.map((l) => `${l.port}${l.ssl ? ':ssl' : ''}`),
        metrics: settings.metrics ? '/metrics' : 'off',
        ...(settings.prometheusPort !== undefined ? { prometheusPort: settings.prometheusPort } : {}),
        ...(settings.stats?.port !== undefined ? { statsPort: settings.stats.port } : {}),
      });
      log.info(describeApiAuth(settings.apiAuth));
      proxy.accessCheck = checkConsulAccess(consul, settings.proxyInstanceName, settings.consulAccess.token !== undefined, log.child('consul'), proxy.lifetime.signal);
      proxy.joinFleet();
      return proxy;
    } catch (err) {
      // A master taken over serves on for the next attempt; one started here goes with this one.
      if (haproxy?.status().takenOver) await haproxy.detach();
      else await haproxy?.stop();
      await localConsul?.stop();
      throw err;
    }
  }

  /**
   * Restores the shared specs from Consul KV (one apply), then follows them and publishes this
   * replica's state. Until the restore is live, `successfulinitreload` answers 503.
   */
  private joinFleet(): void {
    const replicaPrefix = replicaPrefixOf(this.settings);
    this.replicaId = this.settings.replicaId ?? `${os.hostname()}:${this.apiPort}`;
    this.store.setWriter(this.replicaId);
    const fleet = new Fleet(
      this.store,
      this.reconciler,
      this.instances,
      replicaPrefix,
      this.consul,
      () => this.publisher?.publish(),
      this.log.child('fleet'),
      this.settings.consulWatchWait,
      this.watcher,
      new Map([...this.fromEnv].map(([name, e]) => [name, e.spec])),
    );
    if (this.certs) fleet.logReaders.push(this.certs);
    this.fleet = fleet;
    this.publisher = new ReplicaPublisher(this.consul, replicaPrefix, this.replicaId, () => this.report(), this.log.child('replica'));
    this.readyPromise = (async () => {
      // Certificates stored in Consul first, so the restore's apply serves them too.
      const failed = (what: string) => (err: Error) => {
        this.restoreFailure = `${what}: ${err.message}`;
      };
      // Instances from the catalog model when it is ready in time: a few node reads rather than
      // one request per restored service (2,000 of them took ~4 s on two connections). Its
      // queries start now, beside the reads of the certificates and the specs; the wait for it
      // starts once the specs are read (Consul answers by then).
      this.watcher.startModel();
      const fromModel = async () =>
        (await this.watcher.modelReady(MODEL_WAIT_MS)) ? { instances: (name: string) => Promise.resolve(this.watcher.modelInstances(name) ?? []) } : undefined;
      const certsNeedReload = (await this.certs?.restore(failed('restoring the certificates'))) ?? false;
      // The Swarm Listener's services join the shared specs first, so one apply routes them all.
      if (this.listener) await this.pullListener(this.listener);
      await fleet.restore(fromModel, failed('restoring the services'));
      if (!fleet.restored) return;
      if (certsNeedReload) {
        await this.reconciler
          .submit('certificates restored from Consul KV', (s) => s, { force: true })
          .catch((err: unknown) => this.log.error(`loading the certificates restored from Consul failed: ${(err as Error).message}`));
      }
      this.certs?.startWatching();
      this.ready = true;
      this.restoreFailure = undefined;
      fleet.startWatching();
      this.publisher?.start();
      const state = this.reconciler.snapshot();
      const watches = this.watcher.stats();
      const { generation } = this.applier.current();
      this.log.info(`ready: serving ${state.services.size} services as replica ${this.replicaId} of ${this.settings.proxyInstanceName}`, {
        services: state.services.size,
        fromEnvironment: this.fromEnv.size,
        instances: [...state.instances.values()].reduce((n, list) => n + list.length, 0),
        consulNodes: watches.nodes,
        certificates: this.certs?.list().length ?? 0,
        generation,
        applies: this.applier.totals(),
        startupMs: Math.round(performance.now() - this.startedAt),
      });
    })();
  }

  /**
   * LISTENER_ADDRESS: the listener's services (get-services), retried every RELOAD_INTERVAL until it
   * answers, written to the shared specs where they differ (replicas=0: removed), so the start-up
   * restore applies them with everything else in one apply. Only then is the proxy ready.
   */
  private async pullListener(listener: SwarmListener): Promise<void> {
    const requests = await listener.services(parseOptionsOf(this.settings), this.settings.reloadInterval, this.lifetime.signal);
    if (requests === undefined) return;
    // Consul may still be coming up, like the listener: retry as the restore does.
    const list = await retryUntilDone(this.lifetime.signal, () => this.store.list(), (err) => this.log.warn(`reading the shared specs for the Swarm Listener's services: ${err.message}; retrying`));
    if (list === undefined) return;
    const stored = list.specs;
    let written = 0;
    let removed = 0;
    for (const r of requests) {
      try {
        if (r.kind === 'remove') {
          if (!stored.has(r.serviceName)) continue;
          await this.store.delete(r.serviceName);
          removed++;
          continue;
        }
        const spec = (await this.routesByDns(r.spec)) ? { ...r.spec, discoveryType: 'dns' as const } : r.spec;
        const have = stored.get(spec.serviceName);
        if (have && specToJson(have) === specToJson(spec)) continue;
        await this.store.put(spec, have === undefined);
        written++;
      } catch (err) {
        this.log.error(`storing the Swarm Listener's service ${r.kind === 'remove' ? r.serviceName : r.spec.serviceName}: ${(err as Error).message}`);
      }
    }
    this.log.info(`Swarm Listener at ${listener.baseUrl}: ${requests.length} services, ${written} stored, ${removed} removed`);
  }

  /** `reload?fromListener=true`: the listener sends every notification again. */
  async notifyListener(): Promise<void> {
    if (!this.listener) throw new InvalidParamError('fromListener', 'fromListener needs LISTENER_ADDRESS, which is not set');
    await this.listener.notifyServices();
  }

  /** Changes wait for the start-up restore: applied before it, the restore would undo them. */
  private assertReady(): void {
    if (!this.ready) {
      // Why it is taking so long, when a try failed: a refusing Consul (an ACL's 403, TLS) says so here.
      const why = this.restoreFailure === undefined ? '' : ` (the last try failed, ${this.restoreFailure})`;
      throw new DfpError('DFP_ERR_NOT_READY', `the proxy is still restoring the shared state from Consul; retry shortly${why}`);
    }
  }

  /** Resolves once the start-up restore is live (tests, the demo). */
  whenReady(): Promise<void> {
    return this.readyPromise;
  }

  private report(): ReplicaReport {
    // Quick: a scale event's files are written a moment later, and onMaterialized publishes again.
    const { generation, hash } = this.applier.current(true);
    return {
      id: this.replicaId,
      api: `http://${this.settings.apiHost}:${this.apiPort}`,
      generation,
      configHash: hash,
      specsHash: this.sharedSpecsHash(this.reconciler.snapshot()),
      kvIndex: this.fleet?.kvIndex ?? 0,
      certsIndex: this.certs?.appliedIndex ?? 0,
      certsRefused: this.certs?.refusedNames() ?? [],
      ready: this.ready,
      at: new Date().toISOString(),
    };
  }

  /** The step stop() is at, for the shutdown watchdog's message. */
  stopStep = '';

  /**
   * `keepHaproxy` (HAPROXY_ON_STOP=keep, SIGUSR2): everything stops but HAProxy, which keeps
   * serving the last applied config for the next start with this STATE_DIR to take over.
   */
  async stop(options: { readonly keepHaproxy?: boolean } = {}): Promise<void> {
    const keep = options.keepHaproxy ?? this.settings.haproxyOnStop === 'keep';
    this.ready = false;
    this.lifetime.abort();
    this.log.info(keep ? 'stopping; HAProxy keeps serving' : 'stopping');
    const steps: [string, () => unknown][] = [
      ['closing the API', () => this.api?.close()],
      ['stopping the fleet follower', () => this.fleet?.stop()],
      ['stopping the certificate follower', () => this.certs?.stop()],
      ['withdrawing the replica report', () => this.publisher?.stop()],
      ['stopping the Consul watches', () => this.watcher.stop()],
      ['finishing the Consul access check', () => this.accessCheck],
      ['finishing the apply in flight', () => this.reconciler.close()],
      ['writing the files of the last scale events', () => this.applier.flush()],
      ['stopping the idle-time GC', () => this.idleGc.stop()],
      keep ? ['leaving HAProxy serving', () => this.haproxy.detach()] : ['stopping HAProxy', () => this.haproxy.stop()],
      ['closing the Consul connections', () => this.consul.close()],
      ['stopping the local Consul', () => this.localConsul?.stop()],
    ];
    for (const [step, run] of steps) {
      this.stopStep = step;
      this.log.debug(`stop: ${step}`);
      await run();
    }
  }

  /** Last resort when stop() does not finish: kill HAProxy (unless kept) and the local Consul by PID. */
  killChildren(keepHaproxy = this.settings.haproxyOnStop === 'keep'): void {
    for (const pid of [keepHaproxy ? undefined : this.haproxy.status().masterPid, this.localConsul?.pid]) {
      if (pid === undefined) continue;
      killQuietly(-pid, 'SIGKILL');
      killQuietly(pid, 'SIGKILL');
    }
  }

  /**
   * DISCOVERY=dns: a service that names no discoveryType, gives every destination a port and that
   * Consul has never heard of goes to its DNS name. Decided here, once, and stored with the spec, so
   * every replica routes it the same way; a later reconfigure decides again.
   */
  private async routesByDns(spec: ServiceSpec): Promise<boolean> {
    if (this.settings.discovery !== 'dns' || spec.discoveryType !== undefined) return false;
    if (!spec.destinations.every((d) => d.port !== undefined || d.outboundHostname !== undefined)) return false;
    if (spec.destinations.every((d) => d.outboundHostname !== undefined)) return false;
    try {
      // The spec as it would be stored must be one every replica accepts (no sticky sessions with
      // DNS targets, a name a resolver can answer): else Consul it stays, with its warning.
      checkModes({ ...spec, discoveryType: 'dns' }, (field) => field);
    } catch {
      return false;
    }
    return !(await knownToConsul(this.consul, consulServiceName(spec)));
  }

  /** What the metrics' gauges read at scrape time. */
  private metricsSources(): MetricsSources {
    return {
      generation: () => this.applier.current(true).generation,
      ready: () => this.ready,
      services: () => this.reconciler.snapshot().services.size,
      haproxyUp: () => this.haproxy.status().running,
      consul: () => {
        const stats = this.consul.stats();
        return { openWatches: stats.inFlight.watch, connections: stats.connections };
      },
      fleet: async () => {
        if (!this.fleet) return undefined;
        const { replicas, unknown } = await readReplicas(this.consul, this.fleet.replicaPrefix);
        if (replicas === null || unknown !== null) return undefined;
        const mine = this.sharedSpecsHash(this.reconciler.snapshot());
        return { replicas: replicas.length, inAgreement: replicas.every((r) => r.specsHash === mine) };
      },
    };
  }

  // --- ProxyCore -------------------------------------------------------------------------------

  /** `GET /metrics`: the Prometheus text, or undefined with METRICS=false. */
  async metricsText(): Promise<{ contentType: string; text: string } | undefined> {
    if (!this.metrics.enabled) return undefined;
    return { contentType: this.metrics.contentType, text: await this.metrics.text() };
  }

  /**
   * `metrics`: HAProxy's statistics as CSV (`show stat` on the admin socket, the same CSV as the
   * stats page's `;csv`), so it works without STATS_USER/STATS_PASS. `distribute`: every live
   * replica's, fetched from the API address each publishes, one after the other.
   */
  async haproxyStats(distribute: boolean): Promise<string> {
    if (!distribute) {
      await this.haproxy.whenUp(5000);
      const csv = await this.haproxy.adminCommand('show stat').catch((err: unknown) => {
        throw new HaproxyUnavailableError(`HAProxy's admin socket did not answer show stat: ${(err as Error).message}`, err);
      });
      return csv.endsWith('\n') ? csv : `${csv}\n`;
    }
    const replicas = this.fleet ? await listReplicas(this.consul, this.fleet.replicaPrefix) : [];
    const bodies: string[] = [];
    for (const r of replicas) {
      const url = `${r.api}/v1/docker-flow-proxy/metrics?distribute=false`;
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
        const text = await res.text();
        if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text.slice(0, 200)}`);
        bodies.push(text.endsWith('\n') ? text : `${text}\n`);
      } catch (err) {
        throw new ReplicaUnreachableError(`replica ${r.id} did not give its metrics (${url}): ${(err as Error).message}`, err);
      }
    }
    return bodies.join('');
  }

  async reconfigure(
    requested: ServiceSpec,
    options: Partial<ChangeOptions> = {},
    cert?: { readonly name: string; readonly pem: string },
  ): Promise<{ warnings: string[]; dryRun?: DryRunResult }> {
    let spec = requested;
    // Accepted by the API: propagation is timed from here until HAProxy serves the change.
    const seenAt = performance.now();
    // serviceCert: a 400 naming it before anything changes.
    if (cert) parseCertBundle('serviceCert', cert.pem);
    // Read instances before touching state: if Consul cannot answer, nothing changes (503).
    const mark = this.watcher.mark(consulServiceName(spec));
    const instances = await this.instances.instances(consulServiceName(spec));
    const warnings: string[] = [];
    if (instances.length === 0 && (await this.routesByDns(spec))) {
      spec = { ...spec, discoveryType: 'dns' };
      warnings.push(`Consul does not know ${consulServiceName(spec)}: routed to the DNS name ${dnsTarget(spec, {})} (DISCOVERY=dns)`);
    }
    // Asked of the same state up to three times (the check below, the precheck, the apply), and
    // each answer copies the state's maps (~20 ms at 10,000 services): the last answer is kept.
    let last: { readonly from: DesiredState; readonly to: DesiredState } | undefined;
    const change: Change = (s) => {
      if (last?.from !== s) last = { from: s, to: withService(s, spec, instances) };
      return last.to;
    };
    const env = this.fromEnv.get(spec.serviceName);
    if (env) warnings.push(`${spec.serviceName} is also defined by ${env.prefix}* in this proxy's environment; this one wins until it is removed`);
    if (instances.length === 0 && spec.destinations.some((d) => dnsTarget(spec, d) === undefined)) warnings.push(`Consul has no healthy instance of ${consulServiceName(spec)} yet; the route answers 503 until one passes`);
    const next = change(this.reconciler.snapshot()); // refuses a taken aclName before anything is stored
    if (options.dryRun) return { warnings, dryRun: this.preview(next) };
    this.assertReady();
    if (cert) await this.putCert(certNameFrom(cert.name), cert.pem, 'serviceCert');
    // HAProxy's verdict before the spec reaches the shared store: a spec every replica would refuse
    // must never be stored. A change that goes out through the runtime API (map entries, servers)
    // carries no value HAProxy can refuse once our grammar accepted it, so only others pay for it,
    // and concurrent ones pay together.
    await this.prechecks.run(change).catch((err: unknown) => {
      throw err instanceof ConfigRejectedError && !(err instanceof FdLimitError) ? new ConfigRejectedError(err.output, true) : err;
    });
    // The environment's spec of that name is this replica's own: the shared store never sees it.
    const live = this.reconciler.snapshot().services.get(spec.serviceName);
    const previous = live !== undefined && this.fromEnv.get(spec.serviceName)?.spec === live ? undefined : live;
    // Our own write goes live here first; the fleet's KV watch must not apply an older snapshot over it.
    const written = this.fleet?.beginOwnWrite();
    let landed: number | undefined;
    try {
      const landedAt = await this.store.put(spec, previous === undefined);
      try {
        await this.reconciler.submit(`reconfigure ${spec.serviceName}`, change, { fromRequest: true, source: 'api', seenAt });
      } catch (err) {
        // Not applied here: take it back out of the shared store, so no replica applies it either.
        landed = await this.takeBack(spec.serviceName, previous, landedAt);
        throw err;
      }
      landed = await landedAt().catch((err: unknown) => {
        if (options.waitAll) throw err;
        return undefined;
      });
    } finally {
      written?.(landed);
    }
    // The watch may have reported newer instances than the ones read above; adopt reads again then.
    // Adopted only if the state holds that very list (nothing replaced it since).
    const consulName = consulServiceName(spec);
    if (this.reconciler.snapshot().instances.get(consulName) === instances) this.watcher.adopt(consulName, instances, mark);
    else this.watcher.kick(consulName);
    warnings.unshift(
      ...this.applier.liveConflicts()
        .filter((c) => c.loser === spec.aclName || c.winner === spec.aclName)
        .map((c) => `route ${c.route} is claimed by both ${c.winner} and ${c.loser}; ${c.winner} wins (ordered by aclName)`),
    );
    if (options.waitAll && landed !== undefined) await this.fleet?.waitForAll(landed, this.settings.replicaWaitTimeout * 1000);
    return { warnings };
  }

  /**
   * Takes a stored spec that failed to apply here back out of the shared store, with check-and-set
   * on the index this replica's write landed at. If another replica has written the service since,
   * that write is newer than ours and stays: this replica then follows it like any other change.
   * Returns the index the take-back landed at, if it did.
   */
  private async takeBack(serviceName: string, previous: ServiceSpec | undefined, landedAt: () => Promise<number>): Promise<number | undefined> {
    try {
      const undone = await this.store.undo(serviceName, await landedAt(), previous);
      if (undone === undefined) this.log.warn(`not rolling back the stored spec of ${serviceName}: another write replaced it after this one's, and that newer write stays`);
      return undone;
    } catch (err) {
      this.log.error(`could not roll back the stored spec of ${serviceName}: ${(err as Error).message}`);
      return undefined;
    }
  }

  async remove(serviceName: string, aclName?: string, options: Partial<ChangeOptions> = {}): Promise<{ removed: boolean; serviceName: string; dryRun?: DryRunResult }> {
    const seenAt = performance.now();
    const services = this.reconciler.snapshot().services;
    const target = services.has(serviceName)
      ? serviceName
      : aclName === undefined
        ? undefined
        : [...services.values()].find((s) => s.aclName === aclName)?.serviceName;
    if (target === undefined) return { removed: false, serviceName, ...(options.dryRun ? { dryRun: { kind: 'none', diff: '', commands: [] } } : {}) };
    const env = this.fromEnv.get(target);
    if (env && services.get(target) === env.spec) {
      throw new InvalidParamError('serviceName', `${target} is defined by ${env.prefix}* in this proxy's environment; change the environment to remove it`);
    }
    // The environment's service of that name, if any, takes its place again (the API's one won over it).
    const fallback = this.fromEnv.get(target)?.spec;
    const change: Change = fallback ? (s) => withService(withoutService(s, target), fallback, s.instances.get(consulServiceName(fallback)) ?? []) : (s) => withoutService(s, target);
    if (options.dryRun) return { removed: false, serviceName: target, dryRun: this.preview(change(this.reconciler.snapshot())) };
    this.assertReady();
    change(this.reconciler.snapshot()); // refuses (400) before anything is deleted, e.g. an env fallback that no longer fits
    const written = this.fleet?.beginOwnWrite();
    let index: number | undefined;
    try {
      index = await this.store.delete(target);
      await this.reconciler.submit(`remove ${target}`, change, { source: 'api', seenAt });
    } finally {
      written?.(index);
    }
    if (options.waitAll) await this.fleet?.waitForAll(index, this.settings.replicaWaitTimeout * 1000);
    return { removed: true, serviceName: target };
  }

  private preview(next: DesiredState): DryRunResult {
    const plan = this.applier.preview(serviceStates(next));
    const live = this.applier.liveFiles();
    const maps = this.applier.mapFiles();
    // credentials.cfg is never shown: its passwords stay on this machine.
    const diff = [
      unifiedDiff(live?.config ?? '', plan.rendered.config, 'haproxy.cfg'),
      ...MAP_NAMES.map((m) => unifiedDiff(live?.maps[m] ?? '', plan.rendered.maps[m], MAP_FILES[m])),
      live?.secrets !== plan.rendered.secrets ? '--- credentials.cfg\n+++ credentials.cfg\n(changed; credentials are not shown)\n' : '',
    ].join('');
    return {
      kind: plan.kind,
      diff,
      commands: plan.ops.map((op) => describeOp(op, maps)),
      ...(plan.kind === 'reload' ? { reloadBecause: plan.reloadBecause } : {}),
    };
  }

  async reload(recreate: boolean): Promise<void> {
    if (!recreate) {
      await this.reconciler.submit('reload', (s) => s, { force: true });
      return;
    }
    // recreate: re-read every service's instances from Consul, then rebuild and reload.
    const specs = [...this.reconciler.snapshot().services.values()];
    const fresh = await Promise.all(specs.map(async (spec) => [spec, await this.instances.instances(consulServiceName(spec))] as const));
    await this.reconciler.submit(
      'reload recreate',
      (s) =>
        withServices(
          s,
          fresh.filter(([spec]) => s.services.get(spec.serviceName) === spec).map(([spec, instances]) => ({ spec, instances })),
          (_spec, err) => {
            throw err;
          },
        ),
      { force: true },
    );
  }

  /** `PUT cert` and `serviceCert`: validated, stored in Consul KV for every replica, then live here. */
  async putCert(name: string, pem: string, parameter = 'body', options: Partial<ChangeOptions> = {}): Promise<CertOutcome> {
    if (!options.dryRun) this.assertReady();
    if (!this.certs) throw new DfpError('DFP_ERR_NOT_READY', 'the proxy is still starting');
    return this.certs.put(name, pem, parameter, options);
  }

  /** `DELETE cert`: out of Consul KV (every replica follows) and out of HAProxy here. */
  async deleteCert(name: string, options: Partial<ChangeOptions> = {}): Promise<CertOutcome> {
    if (!options.dryRun) this.assertReady();
    if (!this.certs) throw new DfpError('DFP_ERR_NOT_READY', 'the proxy is still starting');
    return this.certs.delete(name, options);
  }

  certList(): CertListing[] {
    return this.certs?.list() ?? [];
  }

  liveConfig(): string {
    return this.applier.liveConfig() ?? '';
  }

  /**
   * Where a live service comes from: `api` (an API call, shared through Consul KV), or `env` with
   * the variables that define it. An API call for a name the environment defines wins.
   */
  sourceOf(serviceName: string): { Source: 'api' | 'env'; EnvVariables?: string } {
    const env = this.fromEnv.get(serviceName);
    return env && this.reconciler.snapshot().services.get(serviceName) === env.spec ? { Source: 'env', EnvVariables: `${env.prefix}*` } : { Source: 'api' };
  }

  /** The specs every replica of the fleet shares (agreement is about those; env services are each replica's own). */
  private specsHashMemo: { readonly services: WeakRef<DesiredState['services']>; readonly hash: string } | undefined;

  /**
   * The agreement hash; a scale event keeps the very same map of specs, so it is not hashed again.
   * The map is held weakly: a replaced one would otherwise stay alive (2 MB at 10,000 services).
   */
  private sharedSpecsHash(state: DesiredState): string {
    if (this.specsHashMemo?.services.deref() !== state.services) this.specsHashMemo = { services: new WeakRef(state.services), hash: specsHash(this.sharedSpecs(state)) };
    return this.specsHashMemo.hash;
  }

  private sharedSpecs(state: DesiredState): ServiceSpec[] {
    return [...state.services.values()].filter((spec) => this.fromEnv.get(spec.serviceName)?.spec !== spec);
  }

  services(): ServiceSpec[] {
    return [...this.reconciler.snapshot().services.values()].sort((a, b) => (a.serviceName < b.serviceName ? -1 : 1));
  }

  async status(): Promise<Record<string, unknown>> {
    const state = this.reconciler.snapshot();
    // Quick: a status poll must not write the files of scale events early (at 10,000 services
    // each write is ~50 ms of CPU); while they lag (at most 1 s) ConfigHash is ''.
    const { generation, hash } = this.applier.current(true);
    const mine = this.sharedSpecsHash(state);
    const { replicas, unknown } = this.fleet ? await readReplicas(this.consul, this.fleet.replicaPrefix) : { replicas: null, unknown: 'not part of the fleet yet' };
    return {
      Ready: this.ready,
      Generation: generation,
      ConfigHash: hash,
      Haproxy: this.haproxy.status(),
      Applies: this.applier.records().slice(-20),
      ApplyCounts: this.applier.totals(),
      // `haproxy -c` runs since start: prechecks of API changes (one per burst) and reloads, minus
      // reloads of files a check had just passed but for slot addresses (applier.ts verdictKey).
      ConfigChecks: this.applier.validations,
      // Files written after runtime changes: only the touched backends rendered, or every service.
      FileWrites: this.applier.fileWrites,
      // The control plane's own memory, in MB (process.memoryUsage): RSS and the JS heap.
      Memory: memoryMb(),
      Watches: this.watcher.stats(),
      // Config-defined server slots (scale events fill and free them; a full backend reloads to grow).
      Slots: this.applier.slotUsage(),
      Fleet: {
        InstanceName: this.settings.proxyInstanceName,
        ReplicaId: this.replicaId,
        SpecsHash: mine,
        KvIndex: this.fleet?.kvIndex ?? 0,
        InvalidSpecs: this.fleet?.invalid ?? [],
        // Unknown (null, and ReplicasUnknown says why) while Consul cannot be read, refuses the list
        // or lists no report at all; otherwise every live replica and whether it agrees.
        InAgreement: replicas === null || unknown !== null ? null : replicas.every((r) => r.specsHash === mine),
        ReplicasUnknown: unknown,
        Replicas: replicas?.map((r) => ({ ...r, Agrees: r.specsHash === mine })) ?? null,
      },
      Services: [...state.services.values()].map((spec) => ({
        ServiceName: spec.serviceName,
        ConsulService: consulServiceName(spec),
        Instances: state.instances.get(consulServiceName(spec))?.length ?? 0,
        ...this.sourceOf(spec.serviceName),
      })),
    };
  }

  isReady(): boolean {
    return this.ready;
  }

  /**
   * `GET /ui/data`. Reads HAProxy's `show stat` and the replica list each time (a page polls every
   * 2 s); either one that fails or takes longer than DASHBOARD_READ_MS leaves its part empty with
   * the reason, and the rest is still shown.
   */
  async dashboard(): Promise<DashboardData> {
    const state = this.reconciler.snapshot();
    const within = <T>(read: Promise<T>, what: string): Promise<T> =>
      Promise.race([read, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} took longer than ${DASHBOARD_READ_MS} ms`)), DASHBOARD_READ_MS).unref())]);
    const [stats, fleet] = await Promise.all([
      within(this.haproxy.adminCommand('show stat'), "HAProxy's show stat").then(
        (csv) => parseShowStat(csv),
        (err: unknown) => ({ error: `HAProxy's stats could not be read: ${(err as Error).message}` }),
      ),
      this.fleet
        ? within(readReplicas(this.consul, this.fleet.replicaPrefix), 'reading the replica list from Consul').catch((err: unknown) => ({ replicas: null, unknown: (err as Error).message }))
        : Promise.resolve({ replicas: null, unknown: 'not part of the fleet yet' }),
    ]);
    const { generation, hash } = this.applier.current(true);
    const haproxy = this.haproxy.status();
    return buildDashboard({
      at: new Date(),
      proxy: {
        instanceName: this.settings.proxyInstanceName,
        replicaId: this.replicaId,
        ready: this.ready,
        generation,
        configHash: hash,
        haproxyUp: haproxy.running,
        haproxyRestarts: haproxy.restarts,
        applyCounts: { ...this.applier.totals() },
        metrics: this.metrics.enabled,
      },
      services: [...state.services.values()].map((spec) => ({
        spec,
        consulService: consulServiceName(spec),
        source: this.sourceOf(spec.serviceName).Source,
        instances: state.instances.get(consulServiceName(spec)) ?? [],
        backends: this.applier.backendsOf(spec),
      })),
      stats,
      replicas: { list: fleet.replicas, unknown: fleet.unknown, mine: this.sharedSpecsHash(state), self: this.replicaId },
      recent: this.metrics.recent.toArray(),
    });
  }
}

/** How long the dashboard waits for HAProxy's stats and for the replica list. */
const DASHBOARD_READ_MS = 2000;

/**
 * No HAProxy to take over: start one from the files the last run left when they can be used (the
 * routes serve before the restore), else from an empty config.
 */
async function startHaproxy(applier: ConfigApplier, haproxy: HaproxyProcess, log: Logger): Promise<void> {
  if (await applier.resumeFromDisk()) {
    try {
      await haproxy.start();
      return;
    } catch (err) {
      log.warn(`HAProxy did not start from the files of the last run (${(err as Error).message}); starting it with an empty config`);
      await haproxy.stop();
    }
  }
  await applier.init(serviceStates(EMPTY_STATE));
  await haproxy.start();
}

/** The start-up line about the API's authentication: which kinds, never a credential. */
function describeApiAuth(auth: Settings['apiAuth']): string {
  if (auth === undefined) return 'the API requires no credentials (API_USER/API_PASSWORD, API_TOKEN unset): keep PORT off public networks';
  const kinds = [...(auth.basic ? ['HTTP basic (API_USER/API_PASSWORD)'] : []), ...(auth.token ? ['a bearer token (API_TOKEN)'] : [])];
  return `the API requires ${kinds.join(' or ')} on every endpoint but ping, /v1/test and /v2/test`;
}

function memoryMb(): Record<string, number> {
  const m = process.memoryUsage();
  const mb = (n: number) => Math.round((n / 1048576) * 10) / 10;
  return { rss: mb(m.rss), heapTotal: mb(m.heapTotal), heapUsed: mb(m.heapUsed), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) };
}

/** How requests (and services from the environment) are parsed with these settings. */
function parseOptionsOf(settings: Settings): ParseOptions {
  const h = settings.http;
  return {
    separator: settings.separator,
    listenerPorts: new Set(settings.listeners.map((l) => l.port)),
    tlsPorts: new Set(settings.listeners.filter((l) => l.ssl).map((l) => l.port)),
    entryPorts: { plain: settings.listeners.find((l) => !l.ssl)?.port, tls: settings.listeners.find((l) => l.ssl)?.port },
    clientCa: h.caFile !== undefined,
    // F16: a user without a password must get one from its usersSecret file or USERS.
    passwordKnown: (user, secret) => [...(secret ? (h.userSecrets.get(secret) ?? []) : []), ...h.users].some((u) => u.startsWith(`${user}:`)),
    reservedPorts: new Map<number, string>([
      ...(settings.apiPort > 0 ? [[settings.apiPort, "the API's port (PORT)"] as [number, string]] : []),
      ...(settings.stats?.port !== undefined ? [[settings.stats.port, 'the stats page (STATS_PORT)'] as [number, string]] : []),
      ...(settings.prometheusPort !== undefined ? [[settings.prometheusPort, "HAProxy's Prometheus exporter (PROMETHEUS_PORT)"] as [number, string]] : []),
    ]),
  };
}
