/**
 * Build step (`npm run build`, after tsc): writes ajv's standalone code for the configuration schema to
 * `config-validator.cjs` beside this module, which config.ts loads instead of compiling the schema on
 * every start of a daemon, a command or `openNode()`.
 */
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { AJV_OPTIONS, validatorSchema } from './config.js';

const require = createRequire(import.meta.url);
const { Ajv } = require('ajv') as typeof import('ajv');
const { default: standaloneCode } = require('ajv/dist/standalone/index.js') as typeof import('ajv/dist/standalone/index.js');

const ajv = new Ajv({ ...AJV_OPTIONS, code: { source: true } });
writeFileSync(new URL('config-validator.cjs', import.meta.url), standaloneCode(ajv, ajv.compile(validatorSchema())));
