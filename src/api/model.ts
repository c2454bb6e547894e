import { DEST_FIELDS, type FieldDef, SERVICE_FIELDS } from '../spec/fields.js';
import type { ServiceSpec } from '../spec/types.js';

function show(fields: readonly FieldDef[], from: object, to: Record<string, unknown>): void {
  const source = from as Record<string, unknown>;
  for (const field of fields) {
    const value = source[field.name] ?? field.empty;
    to[field.response] = field.show ? field.show(value) : value;
  }
}

/**
 * The original's service model (PascalCase), as reconfigure and `config?type=json` show it, derived
 * from the field table. Secret fields show their redacted form: no password, hash or key (F5).
 */
export function serviceModel(spec: ServiceSpec): Record<string, unknown> {
  const out: Record<string, unknown> = { ServiceName: spec.serviceName };
  show(SERVICE_FIELDS, spec, out);
  out.ServiceDest = spec.destinations.map((d) => {
    const dest: Record<string, unknown> = { Index: d.index, ReqMode: d.reqMode };
    show(DEST_FIELDS, d, dest);
    return dest;
  });
  return out;
}
