/**
 * CRC-32 (the IEEE polynomial, as zlib.crc32 computes it) of joined or cut byte strings from the CRCs
 * of their parts, without reading the bytes again: the arithmetic of zlib's crc32_combine, in
 * polynomials over GF(2) modulo the CRC's polynomial, in the reflected bit order zlib uses.
 *
 * A receiver that checked a 1 MiB frame's CRC and stores its data again under another header needs the
 * CRC of the new frame: this gets it in a few hundred bit operations instead of another pass over the
 * megabyte.
 *
 * Pure functions, no I/O.
 */

/** The CRC-32 polynomial, reflected. */
const POLY = 0xedb88320;
/** x^0 (the polynomial 1), reflected. */
const ONE = 0x80000000;

/** a(x) · b(x) modulo the polynomial. */
function multModP(a: number, b: number): number {
  let product = 0;
  let m = ONE;
  for (;;) {
    if ((a & m) !== 0) {
      product ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = (b & 1) !== 0 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return product >>> 0;
}

/** X2N[k] = x^(2^k) modulo the polynomial. */
const X2N: readonly number[] = (() => {
  const table = [ONE >>> 1];
  for (let k = 1; k < 32; k++) table.push(multModP(table[k - 1] as number, table[k - 1] as number));
  return table;
})();

/** x^(8 · bytes) modulo the polynomial: what appending `bytes` bytes multiplies a CRC's register by. */
function shiftOf(bytes: number): number {
  let p = ONE;
  let k = 3;
  for (let n = bytes; n > 0; n = Math.floor(n / 2), k++) if (n % 2 === 1) p = multModP(X2N[k % 32] as number, p);
  return p;
}

/** The CRC of `A ‖ B`, from the CRC of A, the CRC of B and B's length. */
export function crc32Combine(crcA: number, crcB: number, bytesB: number): number {
  return (multModP(shiftOf(bytesB), crcA) ^ crcB) >>> 0;
}

/** The CRC of B, from the CRC of `A ‖ B`, the CRC of A and B's length. */
export function crc32Tail(crcAB: number, crcA: number, bytesB: number): number {
  return (multModP(shiftOf(bytesB), crcA) ^ crcAB) >>> 0;
}
