/**
 * `mqlog completion bash|zsh`: prints a shell completion script for mqlog's commands and their options,
 * made from the commands themselves (so it never lists an option a command does not take). Install:
 * `mqlog completion bash > /etc/bash_completion.d/mqlog`, or `source <(mqlog completion zsh)` in ~/.zshrc.
 */
import { usageError, writeLine, type Command, type ParsedArgs } from './args.js';
import { COMMANDS } from './commands.js';

export const completionCommand: Command = {
  name: 'completion',
  summary: 'print a shell completion script (bash or zsh)',
  usage: `bash|zsh
  bash   complete -F script for bash
  zsh    the same script through zsh's bashcompinit`,
  options: {},
  allowPositionals: true,
  run,
};

async function run(args: ParsedArgs): Promise<number> {
  const shell = args.positionals[0];
  if (args.positionals.length !== 1 || (shell !== 'bash' && shell !== 'zsh')) throw usageError('completion needs one shell: bash or zsh');
  const commands = await Promise.all(COMMANDS.filter((c) => c.hidden !== true).map((c) => c.load()));
  await writeLine(script(commands, shell));
  return 0;
}

function script(commands: readonly Command[], shell: 'bash' | 'zsh'): string {
  const cases = commands.map((c) => `    ${c.name}) opts="${['--help', ...Object.keys(c.options).map((o) => `--${o}`)].join(' ')}" ;;`);
  return [
    '# mqlog shell completion',
    ...(shell === 'zsh' ? ['autoload -U +X bashcompinit && bashcompinit'] : []),
    '_mqlog() {',
    '  local cur="${COMP_WORDS[COMP_CWORD]}" opts',
    '  if [ "$COMP_CWORD" -eq 1 ]; then',
    `    COMPREPLY=( $(compgen -W "${commands.map((c) => c.name).join(' ')} help --help --version" -- "$cur") )`,
    '    return',
    '  fi',
    '  case "${COMP_WORDS[1]}" in',
    ...cases,
    '    *) opts="" ;;',
    '  esac',
    '  case "${COMP_WORDS[COMP_CWORD-1]}" in',
    '    --data|--file|--body-to|--handler) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;',
    '  esac',
    '  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )',
    '}',
    'complete -o default -F _mqlog mqlog',
  ].join('\n');
}
