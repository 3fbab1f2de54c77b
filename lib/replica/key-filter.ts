/**
 * A scalable Bloom filter over store keys: "definitely absent" or "maybe
 * present". The replica keeps one over its column-version and tombstone keys
 * so that a message writing brand-new rows (the common case for inserts)
 * needs no read from LevelDB at all. False positives only cost a read;
 * deleted keys simply stay in the filter.
 *
 * Layers double in capacity as keys are added (each sized for about 1%
 * false positives), so the filter never has to be rebuilt.
 */

const BITS_PER_KEY = 10;
const PROBES = 7;

interface Layer {
  bits: Uint32Array;
  mask: number;
  capacity: number;
  count: number;
}

/** Probabilistic set of byte strings. */
export class KeyFilter {
  private readonly layers: Layer[] = [];
  private total = 0;

  constructor(initialCapacity = 1 << 14) {
    this.addLayer(initialCapacity);
  }

  /** Keys added so far. */
  get size(): number {
    return this.total;
  }

  /** Memory held by the bit arrays. */
  get bytes(): number {
    return this.layers.reduce((n, l) => n + l.bits.byteLength, 0);
  }

  add(key: Uint8Array): void {
    let layer = this.layers[this.layers.length - 1]!;
    if (layer.count >= layer.capacity) layer = this.addLayer(layer.capacity * 2);
    const [h1, h2] = hash(key);
    for (let i = 0; i < PROBES; i++) {
      const bit = (h1 + Math.imul(i, h2)) & layer.mask;
      layer.bits[bit >>> 5]! |= 1 << (bit & 31);
    }
    layer.count++;
    this.total++;
  }

  /** False when `key` was certainly never added. */
  mightContain(key: Uint8Array): boolean {
    const [h1, h2] = hash(key);
    for (const layer of this.layers) {
      let all = true;
      for (let i = 0; i < PROBES; i++) {
        const bit = (h1 + Math.imul(i, h2)) & layer.mask;
        if ((layer.bits[bit >>> 5]! & (1 << (bit & 31))) === 0) { all = false; break; }
      }
      if (all) return true;
    }
    return false;
  }

  private addLayer(capacity: number): Layer {
    // Power-of-two bit count so that a mask replaces the modulo.
    let size = 32;
    while (size < capacity * BITS_PER_KEY) size *= 2;
    const layer: Layer = { bits: new Uint32Array(size / 32), mask: size - 1, capacity, count: 0 };
    this.layers.push(layer);
    return layer;
  }
}

/** Two independent 32-bit hashes (FNV-1a and a multiplicative variant) in one pass. */
function hash(key: Uint8Array): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < key.length; i++) {
    const c = key[i]!;
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  // An odd step visits every bit position of a power-of-two table.
  return [a >>> 0, (b | 1) >>> 0];
}
