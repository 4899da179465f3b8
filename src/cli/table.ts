/**
 * Plain-text tables for commands that list things (`stat`, `dump`): a header row, then one row per
 * item, columns padded to the widest cell as a terminal shows it (CJK and emoji take two columns,
 * combining marks none), separated by two spaces. The last column is not padded.
 */

/** Loads string-width (its tables take a noticeable part of a command's start) only when a table is printed. */
export async function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): Promise<string[]> {
  const { default: stringWidth } = await import('string-width');
  const widths = header.map((title, i) => Math.max(stringWidth(title), ...rows.map((row) => stringWidth(row[i] ?? ''))));
  const line = (cells: readonly string[]): string =>
    cells.map((cell, i) => (i === cells.length - 1 ? cell : cell + ' '.repeat((widths[i] ?? 0) - stringWidth(cell)))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}
