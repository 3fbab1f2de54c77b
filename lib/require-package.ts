/**
 * How lib/ and cli/ load the CommonJS packages they depend on (express,
 * cors, ws, prom-client, debug, levelup, leveldown, cli-progress): with
 * `require()`, typed through `import type`, instead of `import`.
 *
 * Why: on Node.js 20, an `import` of a CommonJS module first runs Node's
 * cjs-module-lexer over its source, and over every file it re-exports, to
 * find its named exports. Over the twenty or so files this package imported
 * so, the lexer ran long enough for V8 to optimize it while the server
 * started: about 3 MB of resident memory an idle server kept for nothing
 * (issue 12). `require()` returns `module.exports` as is, the same object
 * an `import` would wrap, so a package loaded both ways (by an embedding
 * app and by us) is still one instance.
 */
import { createRequire } from 'node:module';

/**
 * `require` resolving from this package (an ES module has none of its own).
 * What it returns is untyped: cast it to the `typeof` of a type-only import
 * (`requirePackage('cors') as typeof Cors`). Throws as `require` does
 * (`MODULE_NOT_FOUND`) for a package that is not installed.
 */
export const requirePackage = createRequire(import.meta.url);
