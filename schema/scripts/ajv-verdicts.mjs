// Validate config files with Ajv (Draft 2020-12) and print one JSON verdict per file.
// Usage: node scripts/ajv-verdicts.mjs SCHEMA.json CONFIG.json...  (or read a JSON list of
// {"name", "config"} objects from stdin with "-").
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const [schemaPath, ...files] = process.argv.slice(2);
const schema = JSON.parse(readFileSync(schemaPath, "utf8"));
const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
const validate = ajv.compile(schema);

let items;
if (files.length === 1 && files[0] === "-") {
  items = JSON.parse(readFileSync(0, "utf8"));
} else {
  items = files.map((file) => ({ name: file, config: JSON.parse(readFileSync(file, "utf8")) }));
}
const verdicts = items.map(({ name, config }) => {
  const valid = validate(config);
  const paths = (validate.errors || []).map((e) =>
    e.keyword === "required" ? `${e.instancePath}/${e.params.missingProperty}` :
    e.keyword === "additionalProperties" ? `${e.instancePath}/${e.params.additionalProperty}` :
    e.instancePath);
  return { name, valid, paths: [...new Set(paths)].sort() };
});
process.stdout.write(JSON.stringify(verdicts, null, 1) + "\n");
