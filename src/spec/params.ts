import { InvalidParamError } from '../errors.js';

/**
 * Request parameters as the original read them: query string plus an urlencoded body.
 * Empty values count as absent; a name given twice is an error (the original silently took one).
 */
export class Params {
  private readonly values = new Map<string, string>();
  private readonly seenEmpty = new Set<string>();

  constructor(pairs: Iterable<[string, string]>) {
    for (const [name, value] of pairs) {
      if (this.values.has(name) || (value !== '' && this.seenEmpty.has(name))) {
        throw new InvalidParamError(name, `${name} is given more than once`);
      }
      if (value === '') {
        this.seenEmpty.add(name);
        continue;
      }
      this.values.set(name, value);
    }
  }

  get(name: string): string | undefined {
    return this.values.get(name);
  }

  has(name: string): boolean {
    return this.values.has(name);
  }

  names(): IterableIterator<string> {
    return this.values.keys();
  }
}
