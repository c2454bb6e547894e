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

/**
 * The live instance watch, as callers that read a service directly see it: mark() before the
 * read, adopt() with what it found once applied, kick() when the read failed.
 */
export interface InstanceFollower {
  mark(service: string): number;
  adopt(service: string, instances: readonly Instance[], mark: number): void;
  kick(service: string): void;
}

/** For a proxy without a live watch (tests of the fleet alone). */
export const NO_FOLLOWER: InstanceFollower = { mark: () => 0, adopt: () => undefined, kick: () => undefined };
