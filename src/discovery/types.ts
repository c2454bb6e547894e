/**
 * One running instance of a service, as the registry reports it. Address and port have been
 * validated at the discovery edge (IP literal, 1..65535), so the renderer can write them as is.
 */
export interface Instance {
  /** The registry's ID (Registrator: `host:container:exposedPort`). Names the HAProxy server. */
  readonly id: string;
  readonly address: string;
  readonly port: number;
}

/** Where instances come from. Consul in production; the interface keeps the pipeline testable. */
export interface InstanceSource {
  /** Healthy instances of a registry service. Throws ConsulUnavailableError when it cannot tell. */
  instances(service: string): Promise<Instance[]>;
}
