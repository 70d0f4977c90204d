// Compile JSON Schemas with Ajv (Draft 2020-12) in strict mode, as the web page does, and say
// which fail. Reads a JSON object {name: schema} on stdin; prints {name: error message or null}.
//
//   node modelforge_core/web/ajv_check.mjs < schemas.json
//
// It uses the Ajv bundle the page uses (static/vendor/ajv2020.js), so no node_modules are needed.
import { readFileSync } from "node:fs";
import Ajv2020 from "./static/vendor/ajv2020.js";

const schemas = JSON.parse(readFileSync(0, "utf8"));
const verdicts = {};
for (const [name, schema] of Object.entries(schemas)) {
  try {
    new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true }).compile(schema);
    verdicts[name] = null;
  } catch (error) {
    verdicts[name] = String(error && error.message ? error.message : error);
  }
}
process.stdout.write(JSON.stringify(verdicts) + "\n");
