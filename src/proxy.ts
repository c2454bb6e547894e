import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { DryRunResult, ProxyCore } from './api/core.js';
import { serviceModel } from './api/model.js';
import { ApiServer } from './api/server.js';
import { ConfigApplier } from './apply/applier.js';
import type { Change } from './apply/reconciler.js';
import { Reconciler } from './apply/reconciler.js';
import { describeOp } from './apply/runtime.js';
import type { Settings } from './config/settings.js';
import { ConsulAgent } from './consul/agent.js';
import { ConsulClient } from './consul/client.js';
import { ConsulInstanceSource } from './consul/instances.js';
import { ConsulWatcher } from './consul/watcher.js';
import type { InstanceSource } from './discovery/types.js';
import { HaproxyProcess } from './haproxy/process.js';
import { MAP_FILES } from './render/haproxy-config.js';
import { consulServiceName, type ServiceSpec } from './spec/types.js';
import { type DesiredState, EMPTY_STATE, serviceStates, withInstances, withoutService, withService } from './state/desired-state.js';
import { unifiedDiff } from './util/diff.js';
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

function consulServices(state: DesiredState): Set<string> {
  return new Set([...state.services.values()].map(consulServiceName));
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
    private readonly watcher: ConsulWatcher,
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
        settings.spareBackends,
      );
      await applier.init(serviceStates(EMPTY_STATE));
      await haproxy.start();
      const source = new ConsulInstanceSource(consul, log.child('discovery'), settings.consulPassingOnly);
      // The watcher feeds the reconciler and follows the services the reconciler applied.
      let reconciler: Reconciler | undefined;
      const watcher = new ConsulWatcher(
        consul,
        source,
        (service, list) => {
          reconciler
            ?.submit(`consul: ${service} has ${list.length} instance${list.length === 1 ? '' : 's'}`, (s) => withInstances(s, service, list))
            .catch((err: unknown) => log.warn(`applying the instances of ${service} failed: ${(err as Error).message}`));
        },
        { waitSeconds: settings.consulWatchWait, maxWatches: settings.consulMaxWatches },
        log.child('watch'),
      );
      reconciler = new Reconciler(applier, log.child('reconcile'), (state) => watcher.sync(consulServices(state)), settings.consolidateAfter * 1000);
      const proxy = new FlowProxy(settings, log, haproxy, applier, reconciler, source, watcher, consul, localConsul, undefined);
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
    this.watcher.stop();
    await this.reconciler.close();
    await this.applier.idle();
    await this.haproxy.stop();
    await this.localConsul?.stop();
  }

  // --- ProxyCore -------------------------------------------------------------------------------

  async reconfigure(spec: ServiceSpec, dryRun = false): Promise<{ model: Record<string, unknown>; warnings: string[]; dryRun?: DryRunResult }> {
    // Read instances before touching state: if Consul cannot answer, nothing changes (503).
    const instances = await this.instances.instances(consulServiceName(spec));
    const change: Change = (s) => withService(s, spec, instances);
    const warnings: string[] = [];
    if (instances.length === 0) warnings.push(`Consul has no healthy instance of ${consulServiceName(spec)} yet; the route answers 503 until one passes`);
    if (dryRun) return { model: serviceModel(spec), warnings, dryRun: this.preview(change(this.reconciler.snapshot())) };
    await this.reconciler.submit(`reconfigure ${spec.serviceName}`, change, { fromRequest: true });
    // The watch may have reported newer instances than the ones read above: read again.
    this.watcher.kick(consulServiceName(spec));
    warnings.unshift(
      ...(this.applier.liveFiles()?.conflicts ?? [])
        .filter((c) => c.loser === spec.aclName || c.winner === spec.aclName)
        .map((c) => `route ${c.route} is claimed by both ${c.winner} and ${c.loser}; ${c.winner} wins (ordered by aclName)`),
    );
    return { model: serviceModel(spec), warnings };
  }

  async remove(serviceName: string, aclName?: string, dryRun = false): Promise<{ removed: boolean; serviceName: string; dryRun?: DryRunResult }> {
    const services = this.reconciler.snapshot().services;
    const target = services.has(serviceName)
      ? serviceName
      : aclName === undefined
        ? undefined
        : [...services.values()].find((s) => s.aclName === aclName)?.serviceName;
    if (target === undefined) return { removed: false, serviceName, ...(dryRun ? { dryRun: { kind: 'none', diff: '', commands: [] } } : {}) };
    const change: Change = (s) => withoutService(s, target);
    if (dryRun) return { removed: false, serviceName: target, dryRun: this.preview(change(this.reconciler.snapshot())) };
    await this.reconciler.submit(`remove ${target}`, change);
    return { removed: true, serviceName: target };
  }

  private preview(next: DesiredState): DryRunResult {
    const plan = this.applier.preview(serviceStates(next));
    const live = this.applier.liveFiles();
    const maps = this.applier.mapFiles();
    const diff = [
      unifiedDiff(live?.config ?? '', plan.rendered.config, 'haproxy.cfg'),
      unifiedDiff(live?.maps.exact ?? '', plan.rendered.maps.exact, MAP_FILES.exact),
      unifiedDiff(live?.maps.prefix ?? '', plan.rendered.maps.prefix, MAP_FILES.prefix),
    ].join('');
    return { kind: plan.kind, diff, commands: plan.ops.map((op) => describeOp(op, maps)) };
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
      Watches: this.watcher.stats(),
      Runtime: this.applier.runtimeState(),
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
