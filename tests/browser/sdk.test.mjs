// The SDK's public surface, checked without a browser: what sfu.d.ts declares is what sfu.js
// exports (and each declared method exists), every exported name and member is documented in
// docs/client.md, the Room's event names are the ones RoomEventMap types, the demo page uses
// only the public module, and no error is swallowed by an empty handler.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));
const read = (path) => readFileSync(`${root}${path}`, 'utf8');
const dts = read('web/sfu.d.ts');
const docs = read('docs/client.md');
const sdk = await import(`${root}web/sfu.js`);

/** Top-level exports of the .d.ts: [{name, what}] where what is class|const|function|interface|type. */
function declaredExports() {
  return [...dts.matchAll(/^export (?:declare )?(class|const|function|interface|type) (\w+)/gm)]
    .map(([, what, name]) => ({ name, what }));
}

/** Members (methods and properties) declared in `export class Name ... { ... }`. */
function classMembers(name) {
  const start = dts.search(new RegExp(`^export class ${name}\\b`, 'm'));
  assert.ok(start >= 0, `class ${name} is not in sfu.d.ts`);
  const body = dts.slice(dts.indexOf('{', start) + 1);
  const end = body.search(/^}/m);
  return [...body.slice(0, end).matchAll(/^ {2}(?:readonly |static )*(\w+)[?]?\s*[(<:]/gm)]
    .map(([, member]) => member)
    .filter((member) => member !== 'constructor');
}

const mentioned = (name) => new RegExp(`\`[^\`]*\\b${name}\\b[^\`]*\``).test(docs);

test('sfu.d.ts declares exactly what sfu.js exports', () => {
  const runtime = new Set(Object.keys(sdk));
  const declared = declaredExports().filter((e) => e.what === 'class' || e.what === 'const' || e.what === 'function');
  for (const { name } of declared) assert.ok(runtime.has(name), `sfu.d.ts declares ${name}, which sfu.js does not export`);
  const declaredNames = new Set(declared.map((e) => e.name));
  for (const name of runtime) assert.ok(declaredNames.has(name), `sfu.js exports ${name}, which sfu.d.ts does not declare`);
});

test('every method sfu.d.ts declares exists on the class', () => {
  for (const { name, what } of declaredExports()) {
    if (what !== 'class') continue;
    const cls = sdk[name];
    for (const member of classMembers(name)) {
      const declaredLine = dts.match(new RegExp(`^ {2}(?:static )?${member}[(<]`, 'm'));
      if (!declaredLine) continue; // a property: set at run time, checked through the docs
      const isStatic = /^ {2}static /.test(declaredLine[0]);
      const owner = isStatic ? cls : cls.prototype;
      assert.equal(typeof owner[member], 'function', `${name}.${member} is declared as a method but sfu.js has none`);
    }
  }
});

test('every exported name and class member is documented in docs/client.md', () => {
  const missing = [];
  for (const { name, what } of declaredExports()) {
    if (!mentioned(name)) missing.push(name);
    if (what === 'class') for (const member of classMembers(name)) if (!mentioned(member)) missing.push(`${name}.${member}`);
  }
  assert.deepEqual(missing, [], 'names in sfu.d.ts that docs/client.md never mentions');
});

test('RoomEvent names are the events RoomEventMap types and docs/client.md lists', () => {
  const map = dts.slice(dts.indexOf('export interface RoomEventMap'));
  const typed = new Set([...map.slice(0, map.indexOf('\n}')).matchAll(/^ {2}(\w+):/gm)].map(([, n]) => n));
  const values = new Set(Object.values(sdk.RoomEvent));
  assert.deepEqual([...values].sort(), [...typed].sort());
  for (const event of values) assert.ok(new RegExp(`^\\| [^\\n]*\`${event}\``, 'm').test(docs), `event ${event} has no row in docs/client.md`);
});

test('the demo page imports only the public SDK and reaches into nothing private', () => {
  const page = read('web/index.html');
  const imports = [...page.matchAll(/^import .* from '([^']+)';/gm)].map(([, from]) => from);
  assert.deepEqual(imports, ['/sfu.js']);
  // One test hook exposes the engine on window for white-box tests; the page never calls it.
  const privateUses = page.split('\n').filter((line) => /\b\w+\._[a-zA-Z]/.test(line) && !line.includes('window.sfu = room._client'));
  assert.deepEqual(privateUses, []);
  assert.ok(!/\bsfu\.\w+\(/.test(page), 'the page calls the engine (window.sfu) directly');
});

test('no error is swallowed by an empty handler in the SDK or the page', () => {
  for (const file of ['web/sfu.js', 'web/sfu-client.js', 'web/index.html']) {
    const text = read(file);
    const empty = text.split('\n').filter((line) => /catch\s*\(\s*\(\s*\w*\s*\)\s*=>\s*(\{\s*\}|null|undefined)\s*\)|catch\s*(\(\w*\))?\s*\{\s*\}/.test(line));
    assert.deepEqual(empty, [], `${file} swallows errors`);
  }
});

test('connection quality thresholds', () => {
  assert.equal(sdk.qualityOf(0, 0.02), 'excellent');
  assert.equal(sdk.qualityOf(0.05, 0.02), 'good');
  assert.equal(sdk.qualityOf(0, 0.5), 'good');
  assert.equal(sdk.qualityOf(0.2, 0.02), 'poor');
  assert.equal(sdk.qualityOf(0, 1), 'poor');
});
