/**
 * Every failure the proxy reports has a stable code. The API maps codes to HTTP statuses in one
 * place (api/respond.ts); callers and tests match on `code`, never on message text.
 */
export type ErrorCode =
  | 'DFP_ERR_INVALID_PARAM'
  | 'DFP_ERR_MISSING_PARAM'
  | 'DFP_ERR_NO_ROUTE' // http mode without servicePath or serviceDomain: 409, the Swarm Listener's "give up"
  | 'DFP_ERR_UNSUPPORTED_PARAM'
  | 'DFP_ERR_NOT_FOUND'
  | 'DFP_ERR_UNAUTHORIZED' // API_USER/API_PASSWORD or API_TOKEN is set and the request lacks valid credentials
  | 'DFP_ERR_CONFIG_REJECTED' // `haproxy -c` refused the rendered config
  | 'DFP_ERR_RELOAD_FAILED' // HAProxy did not come up with the new config
  | 'DFP_ERR_HAPROXY_UNAVAILABLE'
  | 'DFP_ERR_CONSUL_UNAVAILABLE'
  | 'DFP_ERR_LISTENER_UNAVAILABLE' // the Swarm Listener (LISTENER_ADDRESS) did not answer
  | 'DFP_ERR_SETTINGS' // bad environment at start-up
  | 'DFP_ERR_SHUTTING_DOWN'
  | 'DFP_ERR_REPLICAS_LAGGING' // wait=all timed out: some live replicas have not applied the change
  | 'DFP_ERR_REPLICAS_UNKNOWN' // Consul refused the replica list (e.g. an ACL): whether they applied it cannot be known
  | 'DFP_ERR_NOT_READY' // start-up restore has not finished
  | 'DFP_ERR_REPLICA_UNREACHABLE' // metrics?distribute=true: a live replica's API did not answer
  | 'DFP_ERR_INTERNAL';

export class DfpError extends Error {
  readonly code: ErrorCode;
  /** The request parameter (with its `.N` index) or env variable at fault, when there is one. */
  readonly parameter: string | undefined;

  constructor(code: ErrorCode, message: string, options: { parameter?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.parameter = options.parameter;
  }
}

export class InvalidParamError extends DfpError {
  constructor(parameter: string, message: string) {
    super('DFP_ERR_INVALID_PARAM', message, { parameter });
  }
}

export class MissingParamError extends DfpError {
  constructor(parameter: string, message = `${parameter} is required`) {
    super('DFP_ERR_MISSING_PARAM', message, { parameter });
  }
}

export class NoRouteError extends DfpError {
  constructor(parameter: string, message: string) {
    super('DFP_ERR_NO_ROUTE', message, { parameter });
  }
}

export class UnsupportedParamError extends DfpError {
  constructor(parameter: string, message: string) {
    super('DFP_ERR_UNSUPPORTED_PARAM', message, { parameter });
  }
}

export class NotFoundError extends DfpError {
  constructor(message: string) {
    super('DFP_ERR_NOT_FOUND', message);
  }
}

/** HAProxy's own validation refused the config. `output` is HAProxy's text (ALERT lines). */
export class ConfigRejectedError extends DfpError {
  readonly output: string;
  /** True when the rejected values came from the request being served (answer 4xx, not 5xx). */
  readonly causedByRequest: boolean;
  constructor(output: string, causedByRequest: boolean) {
    super('DFP_ERR_CONFIG_REJECTED', `HAProxy rejected the new configuration: ${output.trim()}`);
    this.output = output;
    this.causedByRequest = causedByRequest;
  }
}

/**
 * The config would need more file descriptors than this process may open (haproxy/fd-budget.ts).
 * A ConfigRejectedError, so a batch is retried change by change; never the request's fault (the
 * instances come from Consul, the limit from the host), so never a 4xx.
 */
export class FdLimitError extends ConfigRejectedError {
  constructor(explanation: string) {
    super(explanation, false);
    this.message = explanation;
  }
}

export class ReloadFailedError extends DfpError {
  constructor(message: string, cause?: unknown) {
    super('DFP_ERR_RELOAD_FAILED', message, { cause });
  }
}

export class HaproxyUnavailableError extends DfpError {
  constructor(message: string, cause?: unknown) {
    super('DFP_ERR_HAPROXY_UNAVAILABLE', message, { cause });
  }
}

export class ConsulUnavailableError extends DfpError {
  /** Consul answered but could not serve (5xx: no leader, rpc error): worth retrying a while. */
  readonly transient: boolean;
  constructor(message: string, cause?: unknown, transient = false) {
    super('DFP_ERR_CONSUL_UNAVAILABLE', message, { cause });
    this.transient = transient;
  }
}

export class SettingsError extends DfpError {
  constructor(variable: string, message: string) {
    super('DFP_ERR_SETTINGS', `${variable}: ${message}`, { parameter: variable });
  }
}

export class ReplicasLaggingError extends DfpError {
  readonly laggards: readonly string[];
  /** Per-replica results, when the endpoint gives them (`cert` with `distribute`/`wait=all`): the body's `Replicas`. */
  readonly results: readonly object[] | undefined;
  constructor(laggards: readonly string[], timeoutMs: number, results?: readonly object[]) {
    super('DFP_ERR_REPLICAS_LAGGING', `applied here, but not on every live replica within ${timeoutMs} ms; lagging: ${laggards.join(', ')}`);
    this.laggards = laggards;
    this.results = results;
  }
}

/**
 * Consul answered, but not with the replica list (a 403 from an ACL that does not grant `list` on
 * the prefix, say). That is not "no replicas": agreement is unknown, and `wait=all` cannot wait.
 */
export class ReplicasUnknownError extends DfpError {
  /** Why the list could not be read, as Consul put it (status shows it as `Fleet.ReplicasUnknown`). */
  readonly reason: string;
  constructor(reason: string, context = 'the live replicas cannot be listed') {
    super('DFP_ERR_REPLICAS_UNKNOWN', `${context}: ${reason}`);
    this.reason = reason;
  }
}

export class ReplicaUnreachableError extends DfpError {
  constructor(message: string, cause?: unknown) {
    super('DFP_ERR_REPLICA_UNREACHABLE', message, { cause });
  }
}

export class ShuttingDownError extends DfpError {
  constructor() {
    super('DFP_ERR_SHUTTING_DOWN', 'the proxy is shutting down');
  }
}

export function asDfpError(err: unknown): DfpError {
  if (err instanceof DfpError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DfpError('DFP_ERR_INTERNAL', message, { cause: err });
}

/** The API requires credentials (API_USER/API_PASSWORD, API_TOKEN) and the request has none that match. */
export class UnauthorizedError extends DfpError {
  constructor(message: string) {
    super('DFP_ERR_UNAUTHORIZED', message);
  }
}

export class ListenerUnavailableError extends DfpError {
  constructor(message: string, cause?: unknown) {
    super('DFP_ERR_LISTENER_UNAVAILABLE', message, { cause });
  }
}
