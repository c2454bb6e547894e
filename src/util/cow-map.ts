/**
 * A Map made from another by changing a few keys, without copying the other: reads look in the
 * changes first, then in the shared base. The desired state, the name index and the server slot
 * tables are immutable values, each change a new one; with plain Maps every change copied every
 * entry (~40,000 entries per reconfigure at 10,000 services, ~10 ms), so a change cost what the
 * whole state holds. Here it costs what it changes, plus one full copy every FLATTEN_AT changes
 * (or at the first full iteration, which costs as much anyway).
 *
 * Use `CowMap.edit(map)` to get a writable copy of any ReadonlyMap, change it, and hand it on as a
 * ReadonlyMap; nobody may write to it after that (the next edit makes a new one).
 *
 * Iteration follows Map's order, with one difference: a key deleted and set again keeps its old
 * place instead of moving to the end, until a flatten. Nothing here depends on that order.
 */
export class CowMap<K, V> implements Map<K, V> {
  private constructor(
    private readonly base: ReadonlyMap<K, V>,
    /** Keys changed over `base`: a value, or GONE for a deleted key. */
    private readonly changes: Map<K, V | typeof GONE>,
    private count: number,
  ) {}

  /**
   * The entries as one plain Map, made by the first full iteration (which is O(size) anyway) and
   * kept: later iterations run at native speed, and the next edit starts from it with no changes.
   */
  private flat: Map<K, V> | undefined;

  /** A writable map with the entries of `map`, sharing them until changed. */
  static edit<K, V>(map: ReadonlyMap<K, V>): CowMap<K, V> {
    if (map instanceof CowMap) {
      const m = map as CowMap<K, V>;
      if (m.flat !== undefined) return new CowMap(m.flat, new Map(), m.count);
      // A long list of changes slows every read: fold it into a plain base now and then.
      if (m.changes.size < FLATTEN_AT) return new CowMap(m.base, new Map(m.changes), m.count);
      return new CowMap(m.flattened(), new Map(), m.count);
    }
    return new CowMap(map, new Map(), map.size);
  }

  get size(): number {
    return this.count;
  }

  get(key: K): V | undefined {
    const v = this.changes.get(key);
    if (v !== undefined) return v === GONE ? undefined : (v as V);
    // A key changed to the value undefined is stored as such: look the key up, not the value.
    if (this.changes.has(key)) return undefined;
    return this.base.get(key);
  }

  has(key: K): boolean {
    const v = this.changes.get(key);
    if (v !== undefined) return v !== GONE;
    if (this.changes.has(key)) return true;
    return this.base.has(key);
  }

  set(key: K, value: V): this {
    this.flat = undefined;
    if (!this.has(key)) this.count++;
    this.changes.set(key, value);
    return this;
  }

  delete(key: K): boolean {
    if (!this.has(key)) return false;
    this.flat = undefined;
    this.count--;
    if (this.base.has(key)) this.changes.set(key, GONE);
    else this.changes.delete(key);
    return true;
  }

  clear(): void {
    for (const key of this.keys()) this.delete(key);
  }

  entries(): MapIterator<[K, V]> {
    // Unchanged: the base's own iterator.
    if (this.changes.size === 0) return this.base.entries() as MapIterator<[K, V]>;
    return this.flattened().entries();
  }

  private flattened(): Map<K, V> {
    if (this.flat === undefined) {
      const flat = new Map<K, V>();
      for (const [key, value] of this.base) {
        if (!this.changes.has(key)) flat.set(key, value);
        else {
          const v = this.changes.get(key);
          if (v !== GONE) flat.set(key, v as V);
        }
      }
      for (const [key, v] of this.changes) if (v !== GONE && !this.base.has(key)) flat.set(key, v as V);
      this.flat = flat;
    }
    return this.flat;
  }

  keys(): MapIterator<K> {
    return this.changes.size === 0 ? (this.base.keys() as MapIterator<K>) : this.flattened().keys();
  }

  values(): MapIterator<V> {
    return this.changes.size === 0 ? (this.base.values() as MapIterator<V>) : this.flattened().values();
  }

  [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries();
  }

  forEach(fn: (value: V, key: K, map: Map<K, V>) => void, thisArg?: unknown): void {
    for (const [key, value] of this.entries()) fn.call(thisArg, value, key, this);
  }

  get [Symbol.toStringTag](): string {
    return 'CowMap';
  }
}

const GONE: unique symbol = Symbol('gone');

/** Changes kept over a shared base before the next edit copies everything into a new base. */
const FLATTEN_AT = 256;
