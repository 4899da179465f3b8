/**
 * A progress line for long commands: redrawn in place on stderr when stderr is a terminal, at most ten
 * times a second; nothing at all when stderr is piped or redirected, so scripts see only the output.
 */
export interface Progress {
  update(text: string): void;
  done(): void;
}

export function progress(stream: NodeJS.WriteStream = process.stderr): Progress {
  if (stream.isTTY !== true) return { update: () => undefined, done: () => undefined };
  let last = 0;
  let shown = false;
  return {
    update(text) {
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      shown = true;
      const width = Math.max(10, (stream.columns || 80) - 1);
      stream.write(`\r${text.slice(0, width).padEnd(width)}`);
    },
    done() {
      if (shown) stream.write(`\r${' '.repeat(Math.max(10, (stream.columns || 80) - 1))}\r`);
    },
  };
}
