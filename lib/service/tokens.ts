import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * A list of accepted bearer tokens, compared in constant time: each token is
 * hashed to a fixed length first, and every entry is compared, so neither a
 * token's length nor its position in the list shows in the timing.
 */
export class TokenList {
  private readonly digests: Buffer[];

  constructor(tokens: readonly string[]) {
    this.digests = tokens.map(digest);
  }

  /** Whether the list is empty (nothing to check against). */
  get empty(): boolean {
    return this.digests.length === 0;
  }

  accepts(token: string): boolean {
    const given = digest(token);
    let ok = false;
    for (const accepted of this.digests) ok = timingSafeEqual(given, accepted) || ok;
    return ok;
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
