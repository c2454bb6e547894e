/**
 * Server slots: every backend carries a fixed number of config-defined servers (`s1`..`sN`). An
 * instance holds a slot; a scale event points a free slot at the new instance through the runtime
 * API (`set server … addr`, `state ready`) and puts a departed instance's slot in maintenance.
 * Config-defined servers keep HAProxy's connection pooling and carry `cookie`, which servers added
 * with `add server` do not on 2.6 (measured: half the throughput right after a scale event).
 *
 * Slot tables are history: a slot keeps its holder across runtime applies and reloads, so sticky
 * cookies (the slot's name) stay valid and the files always match what the worker runs.
 */

/** Instance ID per slot; `undefined` is a free slot. The length is the backend's slot count. */
export type SlotTable = readonly (string | undefined)[];

export const SLOT_PREFIX = 's';

export function slotName(index: number): string {
  return `${SLOT_PREFIX}${index + 1}`;
}

/** Room for every instance plus one (a rolling update starts the new one first), at least `min`. */
export function slotCount(instances: number, min: number): number {
  let size = 1;
  while (size < instances + 1) size *= 2;
  return Math.max(min, size);
}

/**
 * The table for these instance IDs that keeps every holder of `previous` still present in its slot
 * and gives the newcomers the lowest free slots (in ID order, so equal histories give equal tables).
 * Undefined when they do not fit and `grow` is false. With `grow`, a full table grows to
 * slotCount, and one four times larger than needed shrinks to it (holders past the end move down).
 */
export function assignSlots(previous: SlotTable | undefined, ids: readonly string[], min: number, grow: boolean): SlotTable | undefined {
  const wanted = new Set(ids);
  let size = previous?.length ?? slotCount(ids.length, min);
  if (grow) {
    const fit = slotCount(ids.length, min);
    if (size < fit || size >= fit * 4) size = fit;
  }
  if (size < ids.length) return undefined;
  // Unchanged: the very same table, so everything memoised on it (rendered sections) stays valid.
  if (previous !== undefined && size === previous.length && holdsExactly(previous, wanted)) return previous;
  const table: (string | undefined)[] = new Array<string | undefined>(size).fill(undefined);
  const placed = new Set<string>();
  const movers: string[] = [];
  (previous ?? []).forEach((id, i) => {
    if (id === undefined || !wanted.has(id)) return;
    if (i < size) {
      table[i] = id;
      placed.add(id);
    } else movers.push(id);
  });
  const moving = new Set(movers);
  const newcomers = [...movers.sort(), ...ids.filter((id) => !placed.has(id) && !moving.has(id)).sort()];
  let free = 0;
  for (const id of newcomers) {
    while (table[free] !== undefined) free++;
    table[free] = id;
  }
  return table;
}

function holdsExactly(table: SlotTable, wanted: ReadonlySet<string>): boolean {
  let held = 0;
  for (const id of table) {
    if (id === undefined) continue;
    if (!wanted.has(id)) return false;
    held++;
  }
  return held === wanted.size;
}

/** Slots in use and in total over every table. */
export function slotUsage(tables: Iterable<SlotTable>): { used: number; total: number } {
  let used = 0;
  let total = 0;
  for (const t of tables) {
    total += t.length;
    for (const id of t) if (id !== undefined) used++;
  }
  return { used, total };
}
