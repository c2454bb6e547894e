import type { Instance } from '../discovery/types.js';
import type { ServiceSpec } from '../spec/types.js';

/** One configured service with the instances currently known for it: the renderer's input. */
export interface ServiceState {
  readonly spec: ServiceSpec;
  /** Instances of the spec's Consul service; empty means the backend answers 503. */
  readonly instances: readonly Instance[];
}
