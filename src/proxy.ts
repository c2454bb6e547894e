import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { serviceModel } from './api/model.js';
import type { ProxyCore } from './api/core.js';
import { ApiServer } from './api/server.js';
import { ConfigApplier } from './apply/applier.js';
import { Reconciler } from './apply/reconciler.js';
import type { Settings } from './config/settings.js';
import { ConsulAgent } from './consul/agent.js';
import { ConsulClient } from './consul/client.js';
import { ConsulInstanceSource } from './consul/instances.js';
import type { InstanceSource } from './discovery/types.js';
import { HaproxyProcess } from './haproxy/process.js';
import { EMPTY_STATE, serviceStates, withoutService, withService } from './state/desired-state.js';
import { consulServiceName, type ServiceSpec } from './spec/types.js';
import type { Logger } from './util/log.js';

/** Files below STATE_DIR. Everything the proxy writes at run time lives here. */
export function statePaths(stateDir: string) {
  return {
    stateDir,
    config: path.join(stateDir, 'haproxy.cfg'),
    candidateDir: path.join(stateDir, 'candidate'),
    masterSocket: path.join(stateDir, 'haproxy-master.sock'),
    adminSocket: path.join(stateDir, 'haproxy-admin.sock'),
    pidFile: path.join(stateDir, 'haproxy.pid'),
    consulDir: path.join(stateDir, 'consul'),
  };
}

/**
 * The assembled proxy: sources (API) -> desired state -> discovery (Consul) -> render -> apply.
 */
export class FlowProxy implements ProxyCore {
  private ready = false;
  apiPort = 0;

  private constructor(
    readonly settings: Settings,
    private readonly log: Logger,
    readonly haproxy: HaproxyProcess,
    private readonly applier: ConfigApplier,
    private readonly reconciler: Reconciler,
    private readonly instances: InstanceSource,
    readonly consul: ConsulClient,
    private readonly localConsul: ConsulAgent | undefined,
    private api: ApiServer | undefined,
  ) {}

  static async start(settings: Settings, log: Logger): Promise<FlowProxy> {
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
        });
        addresses = [localConsul.address];
        log.info(`local Consul: CONSUL_ADDRESS=${localConsul.address} (data in ${paths.consulDir})`);
      }
      const consul = new ConsulClient(addresses);
      haproxy = new HaproxyProcess(settings.haproxyBin, paths, log.child('haproxy'));
      const applier = new ConfigApplier(
        settings.haproxyBin,
        haproxy,
        {
          bindPorts: settings.bindPorts,
          timeouts: settings.timeouts,
          connectionMode: settings.connectionMode,
          maxconn: settings.maxconn,
          debug: settings.debug,
          adminSocket: paths.adminSocket,
        },
        paths,
        log.child('apply'),
      );
      await applier.init(serviceStates(EMPTY_STATE));
      await haproxy.start();
      const reconciler = new Reconciler(applier, log.child('reconcile'));
      const proxy = new FlowProxy(settings, log, haproxy, applier, reconciler, new ConsulInstanceSource(consul, log.child('discovery')), consul, localConsul, undefined);
      const api = new ApiServer(proxy, settings.separator, log.child('api'));
      proxy.apiPort = await api.listen(settings.apiPort, settings.apiHost);
      proxy.api = api;
      proxy.ready = true;
      log.info(`API listening on ${settings.apiHost}:${proxy.apiPort}; HAProxy binds ${settings.bindPorts.join(', ')}`);
      return proxy;
    } catch (err) {
      await haproxy?.stop();
      await localConsul?.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    this.ready = false;
    this.log.info('stopping');
    await this.api?.close();
    await this.reconciler.close();
    await this.haproxy.stop();
    await this.localConsul?.stop();
  }

  // --- ProxyCore -------------------------------------------------------------------------------

  async reconfigure(spec: ServiceSpec): Promise<{ model: Record<string, unknown>; warnings: string[] }> {
    // Read instances before touching state: if Consul cannot answer, nothing changes (503).
    const instances = await this.instances.instances(consulServiceName(spec));
    await this.reconciler.submit(`reconfigure ${spec.serviceName}`, (s) => withService(s, spec, instances), { fromRequest: true });
    const warnings = this.applier
      .render(serviceStates(this.reconciler.snapshot()))
      .conflicts.filter((c) => c.loser === spec.aclName || c.winner === spec.aclName)
      .map((c) => `route ${c.route} is claimed by both ${c.winner} and ${c.loser}; ${c.winner} wins (ordered by aclName)`);
    if (instances.length === 0) warnings.push(`Consul has no healthy instance of ${consulServiceName(spec)} yet; the route answers 503 until one passes`);
    return { model: serviceModel(spec), warnings };
  }

  async remove(serviceName: string, aclName?: string): Promise<{ removed: boolean; serviceName: string }> {
    const services = this.reconciler.snapshot().services;
    const target = services.has(serviceName)
      ? serviceName
      : aclName === undefined
        ? undefined
        : [...services.values()].find((s) => s.aclName === aclName)?.serviceName;
    if (target === undefined) return { removed: false, serviceName };
    await this.reconciler.submit(`remove ${target}`, (s) => withoutService(s, target));
    return { removed: true, serviceName: target };
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
      (s) => fresh.reduce((acc, [spec, list]) => (acc.services.get(spec.serviceName) === spec ? withService(acc, spec, list) : acc), s),
      { force: true },
    );
  }

  liveConfig(): string {
    return this.applier.liveConfig() ?? '';
  }

  servicesModel(): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const spec of [...this.reconciler.snapshot().services.values()].sort((a, b) => (a.serviceName < b.serviceName ? -1 : 1))) {
      out[spec.serviceName] = serviceModel(spec);
    }
    return out;
  }

  status(): Record<string, unknown> {
    const state = this.reconciler.snapshot();
    const { generation, hash } = this.applier.current();
    return {
      Ready: this.ready,
      Generation: generation,
      ConfigHash: hash,
      Haproxy: this.haproxy.status(),
      Applies: this.applier.records().slice(-20),
      Services: [...state.services.values()].map((spec) => ({
        ServiceName: spec.serviceName,
        ConsulService: consulServiceName(spec),
        Instances: state.instances.get(consulServiceName(spec))?.length ?? 0,
      })),
    };
  }

  isReady(): boolean {
    return this.ready;
  }
}
