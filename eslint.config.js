// Lint: type-aware checks (no floating promises) and the import direction of the layers
// (cli -> daemon -> transport, queue -> log; errors.ts and util/ are leaves).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const layer = (files, forbidden, why) => ({
  files,
  rules: {
    'no-restricted-imports': ['error', { patterns: forbidden.map((group) => ({ group: [group], message: why })) }],
  },
});

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.bench/', 'var/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: './tsconfig.test.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', name: ['test', 'it', 'describe', 'suite'], package: 'node:test' }] },
      ],
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/restrict-template-expressions': 'off',
      '@typescript-eslint/only-throw-error': 'error',
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  layer(['src/errors.ts'], ['./*', '../*'], 'errors.ts is a leaf: it imports nothing from src'),
  layer(['src/util/**'], ['../log/*', '../queue/*', '../transport/*', '../daemon/*', '../cli/*'], 'util/ is a leaf'),
  layer(['src/log/**'], ['../queue/*', '../transport/*', '../daemon/*', '../cli/*'], 'log/ knows nothing about messages'),
  layer(['src/queue/**'], ['../transport/*', '../daemon/*', '../cli/*'], 'queue/ uses log/ only'),
  layer(['src/transport/**'], ['../queue/*', '../log/*', '../daemon/*', '../cli/*'], 'transport/ never imports queue or log'),
  layer(['src/daemon/**'], ['../cli/*'], 'daemon/ is wired by cli/, not the other way'),
  {
    files: ['test/**', 'bench/**'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: { process: 'readonly', console: 'readonly', URL: 'readonly', setTimeout: 'readonly', Buffer: 'readonly' },
    },
  },
);
