import type { ServerResponse } from 'node:http';
import { ConfigRejectedError, type DfpError, type ErrorCode, ReplicasLaggingError } from '../errors.js';

/** The one place where error codes become HTTP statuses. */
const STATUS: Record<ErrorCode, number> = {
  DFP_ERR_INVALID_PARAM: 400,
  DFP_ERR_MISSING_PARAM: 400,
  DFP_ERR_NO_ROUTE: 409, // the Swarm Listener stops retrying on 409
  DFP_ERR_UNSUPPORTED_PARAM: 400,
  DFP_ERR_NOT_FOUND: 404,
  DFP_ERR_UNAUTHORIZED: 401,
  DFP_ERR_CONFIG_REJECTED: 500,
  DFP_ERR_RELOAD_FAILED: 500,
  DFP_ERR_HAPROXY_UNAVAILABLE: 503,
  DFP_ERR_CONSUL_UNAVAILABLE: 503,
  DFP_ERR_LISTENER_UNAVAILABLE: 502,
  DFP_ERR_SETTINGS: 500,
  DFP_ERR_SHUTTING_DOWN: 503,
  DFP_ERR_REPLICAS_LAGGING: 504,
  DFP_ERR_REPLICAS_UNKNOWN: 502, // Consul answered, but refused the replica list
  DFP_ERR_NOT_READY: 503,
  DFP_ERR_REPLICA_UNREACHABLE: 502,
  DFP_ERR_INTERNAL: 500,
};

export function statusOf(err: DfpError): number {
  if (err instanceof ConfigRejectedError && err.causedByRequest) return 400;
  return STATUS[err.code];
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendText(res: ServerResponse, status: number, text: string): void {
  // text/plain, never text/html: the config holds user-supplied values (F8).
  res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendError(res: ServerResponse, err: DfpError): void {
  sendJson(res, statusOf(err), {
    Status: 'NOK',
    Message: err.message,
    Code: err.code,
    ...(err.parameter === undefined ? {} : { Parameter: err.parameter }),
    ...(err instanceof ReplicasLaggingError ? { Laggards: err.laggards, ...(err.results ? { Replicas: err.results } : {}) } : {}),
  });
}
