/**
 * Applies items that were refused as a whole, in parts, so one bad item does not hold back the
 * others. One by one would cost an attempt per item (at 10,000 services a full render and
 * `haproxy -c`, ~1 s each: hours); instead the longest run that is accepted is found by halving,
 * the item after it is known refused (the last halving tried it on top of that run), and the rest
 * goes on the same way: a few attempts per refused item. A refusal `ends` says is a limit rather
 * than a bad item (file descriptors): every later item it `spares` not is refused with it.
 *
 * `attempt` applies a part on top of what was applied so far, and resolves to the error when it
 * was refused (nothing of that part applied).
 */
export async function applyInParts<T>(
  items: readonly T[],
  wholeError: Error,
  attempt: (part: readonly T[]) => Promise<Error | undefined>,
  limit: { readonly ends: (err: Error) => boolean; readonly spares: (item: T) => boolean },
): Promise<{ item: T; error: Error }[]> {
  const refused: { item: T; error: Error }[] = [];
  let rest = items;
  // The error of applying rest as a whole; known for the first round.
  let whole: Error | undefined = wholeError;
  while (rest.length > 0 && whole !== undefined) {
    // rest[0, ok) is applied; rest[0, bad) on top of it was refused with `why`.
    let ok = 0;
    let bad = rest.length;
    let why: Error = whole;
    while (bad - ok > 1) {
      const mid = Math.floor((ok + bad) / 2);
      const e = await attempt(rest.slice(0, mid));
      if (e === undefined) ok = mid;
      else [bad, why] = [mid, e];
    }
    refused.push({ item: rest[ok] as T, error: why });
    rest = rest.slice(ok + 1);
    if (limit.ends(why)) {
      for (const item of rest) if (!limit.spares(item)) refused.push({ item, error: why });
      rest = rest.filter(limit.spares);
    }
    whole = rest.length > 0 ? await attempt(rest) : undefined;
  }
  return refused;
}
