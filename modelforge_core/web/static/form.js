// A form generated at runtime from the effective config schema (JSON Schema, Draft 2020-12),
// validated in the browser by Ajv against that same schema. Nothing here knows the fields:
// types, enums, ranges, defaults, descriptions and the if/then rules all come from the schema.
import Ajv2020 from "./vendor/ajv2020.js";

// Where a field is shown. Fields no group names land in "More"; plugin option objects get a
// group of their own, shown only while the rule that allows them holds.
const GROUPS = [
  ["Essentials", /^(task|model_name|dataset|compute_specs|strategy|provider)$/, true],
  ["Training length and batches", /^(num_train_epochs|max_steps|per_device_.*|gradient_accumulation_steps|learning_rate|lr_scheduler_type|warmup_ratio)$/, true],
  ["LoRA", /^lora_/, false],
  ["Quantization and precision", /^(use_4bit|use_8bit|bnb_.*|use_nested_quant|fp16|bf16)$/, false],
  ["Optimizer", /^(optim|weight_decay|max_grad_norm|gradient_checkpointing)$/, false],
  ["Data", /^(max_seq_length|eval_split|group_by_length|packing)$/, false],
  ["Evaluation, logging and output", /^(eval_steps|save_steps|logging_steps|seed|output_dir|run_name)$/, false],
];
const HIDDEN = new Set(["$schema"]);

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
};

const types = (prop) => (Array.isArray(prop.type) ? prop.type : prop.type ? [prop.type] : []);
const fmt = (value) => (typeof value === "string" ? value : JSON.stringify(value));

// The words a list field accepts besides a list: the string constants of its oneOf/anyOf.
function listWords(prop) {
  const words = [];
  for (const alt of prop.oneOf || prop.anyOf || []) {
    if (typeof alt.const === "string") words.push(alt.const);
    if (Array.isArray(alt.enum)) words.push(...alt.enum.filter((v) => typeof v === "string"));
  }
  return words;
}

// The type of a list field's items (from "items" or the array alternative of a oneOf/anyOf).
function itemType(prop) {
  const array = types(prop).includes("array") ? prop
    : (prop.oneOf || prop.anyOf || []).find((alt) => types(alt).includes("array")) || {};
  return types(array.items || {})[0] || "string";
}

// "must be ..." for a field whose value matches none of its alternatives (any list option).
function listMessage(prop) {
  const parts = listWords(prop).map((word) => `"${word}"`);
  const item = itemType(prop);
  const what = item === "integer" ? "whole numbers" : item === "number" ? "numbers" : "values";
  parts.push(`a comma-separated list of ${what}`);
  return `must be ${parts.join(" or ")}`;
}

function kindOf(prop) {
  if (prop.enum) return "enum";
  const t = types(prop);
  // A list of objects (grpo's rewards) is written as JSON; a list of plain values comma-separated.
  if (t.includes("array")) return itemType(prop) === "object" || (prop.items && prop.items.properties) ? "json" : "list";
  if (t.includes("boolean")) return "boolean";
  if (t.includes("integer")) return "integer";
  if (t.includes("number")) return "number";
  if (t.includes("string")) return "string";
  if ((prop.oneOf || prop.anyOf || []).some((alt) => types(alt).includes("array"))) return "list";
  if (t.includes("object") || prop.properties) return "object";
  return "string";
}

function rangeText(prop) {
  const parts = [];
  if (prop.minimum !== undefined) parts.push(`≥ ${prop.minimum}`);
  if (prop.exclusiveMinimum !== undefined) parts.push(`> ${prop.exclusiveMinimum}`);
  if (prop.maximum !== undefined) parts.push(`≤ ${prop.maximum}`);
  if (prop.exclusiveMaximum !== undefined) parts.push(`< ${prop.exclusiveMaximum}`);
  if (prop.not && prop.not.const !== undefined) parts.push(`≠ ${prop.not.const}`);
  return parts.join(", ");
}

// A sentence for one Ajv error, in the words a person would use.
function friendly(error, prop) {
  const p = error.params || {};
  if (prop && kindOf(prop) === "list" && ["oneOf", "anyOf", "type", "items", "minItems"].includes(error.keyword)) {
    return listMessage(prop);
  }
  switch (error.keyword) {
    case "maximum": return `must be at most ${p.limit}`;
    case "minimum": return `must be at least ${p.limit}`;
    case "exclusiveMinimum": return `must be greater than ${p.limit}`;
    case "exclusiveMaximum": return `must be less than ${p.limit}`;
    case "required": return "is required";
    case "enum": return `must be one of: ${(p.allowedValues || []).join(", ")}`;
    case "const": return `must be ${fmt(p.allowedValue)}`;
    case "type": return `must be ${p.type === "integer" ? "a whole number" : `a ${p.type}`}`;
    case "not": return "is not allowed here";
    case "pattern": return `must match ${p.pattern}`;
    case "minLength": return "must not be empty";
    default: return error.message || error.keyword;
  }
}

export class SchemaForm {
  constructor(schema, container, { onChange = () => {}, onDataset = () => {} } = {}) {
    this.schema = schema;
    this.container = container;
    this.onChange = onChange;
    this.onDataset = onDataset;
    this.fields = new Map(); // dotted key -> field
    this.groups = new Map(); // options object name -> <details>
    this.ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
    this.validateSchema = this.ajv.compile(schema);
    // The rules' `if` parts alone are fragments (no `type`), which strict mode would warn about.
    this.fragments = new Ajv2020({ strict: false });
    this.showAll = false; // errors of untouched fields appear after the first Start
    this.rules = [];
    this.visibleWhen = new Map(); // options object -> [field, value]
    this.readRules();
  }

  // The allOf if/then rules: the ones that only forbid an options object drive that object's
  // visibility; the others are listed, and tracked (applies / holds / broken) as the user types.
  readRules() {
    (this.schema.allOf || []).forEach((rule, index) => {
      const thenProps = (rule.then && rule.then.properties) || {};
      const forbidden = Object.entries(thenProps).filter(([, sub]) => sub.not && Object.keys(sub.not).length === 0);
      const condition = rule.if && rule.if.not && rule.if.not.properties;
      if (condition && forbidden.length === 1 && Object.keys(thenProps).length === 1) {
        const [field, test] = Object.entries(condition)[0];
        this.visibleWhen.set(forbidden[0][0], [field, test.const]);
        return;
      }
      this.rules.push({ index, description: rule.description || `rule ${index}`,
        applies: rule.if ? this.fragments.compile(rule.if) : () => true, state: "idle", item: null });
    });
  }

  render() {
    const props = this.schema.properties || {};
    const required = new Set(this.schema.required || []);
    const placed = new Set();
    const sections = [];
    for (const [title, pattern, open] of GROUPS) {
      const keys = Object.keys(props).filter((k) => pattern.test(k) && !HIDDEN.has(k) && kindOf(props[k]) !== "object");
      if (!keys.length) continue;
      if (title === "Essentials") keys.sort((a, b) => Number(required.has(b)) - Number(required.has(a)));
      keys.forEach((k) => placed.add(k));
      sections.push(this.section(title, keys.map((k) => this.field(k, props[k], required.has(k))), open));
    }
    const rest = Object.keys(props).filter((k) => !placed.has(k) && !HIDDEN.has(k) && kindOf(props[k]) !== "object");
    if (rest.length) sections.push(this.section("More", rest.map((k) => this.field(k, props[k], required.has(k))), false));
    for (const [name, prop] of Object.entries(props)) {
      if (HIDDEN.has(name) || kindOf(prop) !== "object") continue;
      const children = Object.entries(prop.properties || {}).map(([k, sub]) => this.field(`${name}.${k}`, sub, false));
      const when = this.visibleWhen.get(name);
      const title = when ? `${name} options (${when[0]} ${when[1]})` : `${name} options`;
      const details = this.section(title, children, true);
      details.dataset.options = name;
      this.groups.set(name, details);
      sections.push(details);
    }
    this.container.replaceChildren(...sections);
    const list = document.getElementById("rules");
    list.replaceChildren(...this.rules.map((rule) => {
      rule.item = el("li", { class: "rule idle", "data-rule": String(rule.index) },
        el("span", { class: "mark", "aria-hidden": "true" }), el("span", { text: rule.description }));
      return rule.item;
    }));
    this.refresh();
  }

  section(title, children, open) {
    return el("details", { class: "group", open }, el("summary", { text: title }), el("div", { class: "grid" }, ...children));
  }

  field(key, prop, required) {
    const kind = kindOf(prop);
    const id = `f-${key.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    let input;
    if (kind === "enum") {
      input = el("select", { id, name: key });
      if (prop.default === undefined) input.append(el("option", { value: "", text: "— choose —" }));
      for (const value of prop.enum) input.append(el("option", { value: String(value), text: String(value) }));
    } else if (kind === "boolean") {
      input = el("input", { id, name: key, type: "checkbox" });
    } else if (kind === "integer" || kind === "number") {
      input = el("input", { id, name: key, type: "number", inputmode: kind === "integer" ? "numeric" : "decimal",
        step: kind === "integer" ? "1" : "any", min: prop.minimum, max: prop.maximum });
    } else if (kind === "json") {
      input = el("textarea", { id, name: key, rows: "3", spellcheck: "false", autocomplete: "off" });
    } else {
      input = el("input", { id, name: key, type: "text", spellcheck: "false", autocomplete: "off",
        list: key === "dataset" ? "datasets-list" : key === "model_name" ? "models-list" : undefined });
    }
    const field = { key, prop, kind, input, required, dirty: false,
      nullable: types(prop).includes("null"), defaultValue: prop.default };
    const reset = el("button", { type: "button", class: "reset", title: "back to the default", hidden: true, text: "↺" });
    const range = rangeText(prop);
    const hint = [prop.description, range && `Range: ${range}.`,
      prop.default !== undefined && `Default: ${fmt(prop.default)}.`].filter(Boolean).join(" ");
    field.error = el("div", { class: "error-text", id: `${id}-error`, "aria-live": "polite" });
    field.source = el("span", { class: "source" });
    field.reset = reset;
    const label = el("label", { for: id }, el("span", { class: "name", text: key }), required ? el("span", { class: "req", text: "required" }) : null);
    const control = el("div", { class: `control ${kind}` }, input, reset, field.source);
    field.wrapper = el("div", { class: "field", "data-key": key }, label, control, el("p", { class: "help", text: hint }), field.error);
    if (kind === "boolean") field.wrapper.classList.add("checkbox");
    input.setAttribute("aria-describedby", `${id}-error`);
    this.setInput(field, prop.default);
    const changed = () => {
      field.dirty = true;
      reset.hidden = false;
      field.source.textContent = "set";
      if (key === "dataset") this.onDataset(this.inputValue(field));
      this.refresh();
    };
    input.addEventListener(kind === "boolean" || kind === "enum" ? "change" : "input", changed);
    reset.addEventListener("click", () => {
      field.dirty = false;
      reset.hidden = true;
      field.source.textContent = "";
      this.setInput(field, field.defaultValue);
      this.refresh();
    });
    this.fields.set(key, field);
    return field.wrapper;
  }

  setInput(field, value) {
    const { input, kind } = field;
    if (kind === "boolean") input.checked = value === true;
    else if (kind === "list") input.value = Array.isArray(value) ? value.join(", ") : value ?? "";
    else if (kind === "json") input.value = value === undefined ? "" : JSON.stringify(value);
    else input.value = value === undefined || value === null ? "" : String(value);
  }

  // The value a field holds; undefined: nothing given.
  inputValue(field) {
    const { input, kind, nullable } = field;
    if (kind === "boolean") return input.checked;
    const text = input.value.trim();
    if (kind === "integer" || kind === "number") {
      if (input.validity && input.validity.badInput) return "not a number";
      if (text === "") return nullable ? null : undefined;
      return Number(text);
    }
    if (kind === "json") {
      if (text === "") return undefined;
      try { return JSON.parse(text); } catch { return "not JSON"; }
    }
    if (kind === "list") {
      if (text === "") return nullable ? null : undefined;
      if (listWords(field.prop).includes(text)) return text;
      // A field that is also a plain string (dataset: one path, or a list of sources) keeps one value as it is.
      if (types(field.prop).includes("string") && !text.includes(",")) return text;
      const items = text.split(",").map((s) => s.trim()).filter(Boolean);
      const item = itemType(field.prop);
      return item === "integer" || item === "number" ? items.map((s) => (s === "" || isNaN(Number(s)) ? s : Number(s)))
        : items;
    }
    if (text === "") return nullable ? null : undefined;
    return kind === "enum" ? coerceEnum(field.prop, text) : input.value;
  }

  // The current value of a top-level field, default included (for visibility and rules).
  current(key) {
    const field = this.fields.get(key);
    return field ? this.inputValue(field) : undefined;
  }

  isVisible(key) {
    const top = key.split(".")[0];
    const when = this.visibleWhen.get(top);
    return !when || this.current(when[0]) === when[1];
  }

  // The config the user asked for: required fields, and the fields they changed.
  values() {
    const config = {};
    for (const field of this.fields.values()) {
      if (!this.isVisible(field.key)) continue;
      if (!field.dirty && !field.required) continue;
      const value = this.inputValue(field);
      if (value === undefined) continue;
      const parts = field.key.split(".");
      let node = config;
      for (const part of parts.slice(0, -1)) node = node[part] ??= {};
      node[parts.at(-1)] = value;
    }
    return config;
  }

  // Everything as it will train: the config plus defaults, for the rules' "applies" test.
  withDefaults() {
    const all = {};
    for (const field of this.fields.values()) {
      if (field.key.includes(".")) continue;
      const value = this.inputValue(field);
      if (value !== undefined && value !== null) all[field.key] = value;
    }
    return all;
  }

  refresh() {
    for (const [name, details] of this.groups) details.hidden = !this.isVisible(name);
    const result = this.check();
    this.onChange(result);
    return result;
  }

  check() {
    const config = this.values();
    const valid = this.validateSchema(config);
    const fieldErrors = new Map();
    const other = [];
    const broken = new Set();
    for (const error of valid ? [] : this.validateSchema.errors) {
      const rule = /^#\/allOf\/(\d+)\/(if|then)/.exec(error.schemaPath);
      if (rule) broken.add(Number(rule[1]));
      if (error.keyword === "if") continue;
      if (/\/oneOf\/\d+\//.test(error.schemaPath)) continue; // the oneOf error itself says it
      let path = error.instancePath;
      if (error.keyword === "required") path += `/${error.params.missingProperty}`;
      if (error.keyword === "additionalProperties") path += `/${error.params.additionalProperty}`;
      let key = path.split("/").filter(Boolean).join(".");
      // An error inside a list (one of its items) belongs to the list's field.
      while (!this.fields.has(key) && /\.\d+$/.test(key)) key = key.replace(/\.\d+$/, "");
      const prop = this.fields.has(key) ? this.fields.get(key).prop : undefined;
      const inList = prop && kindOf(prop) === "list" && key !== path.split("/").filter(Boolean).join(".");
      const message = rule ? (this.schema.allOf[Number(rule[1])].description || friendly(error, prop))
        : inList ? listMessage(prop) : friendly(error, prop);
      if (this.fields.has(key)) {
        if (!fieldErrors.has(key)) fieldErrors.set(key, []);
        if (!fieldErrors.get(key).includes(message)) fieldErrors.get(key).push(message);
      } else {
        other.push(`${key || "(root)"}: ${message}`);
      }
    }
    for (const field of this.fields.values()) {
      const value = this.inputValue(field);
      if (value === "not a number") fieldErrors.set(field.key, ["must be a number"]);
      if (value === "not JSON" && field.kind === "json") fieldErrors.set(field.key, ["must be JSON, e.g. [{\"name\": \"regex\"}]"]);
    }
    const everything = this.withDefaults();
    for (const rule of this.rules) {
      rule.state = broken.has(rule.index) ? "broken" : rule.applies(everything) ? "holds" : "idle";
      rule.item.className = `rule ${rule.state}`;
      rule.item.title = { broken: "broken: fix the fields marked", holds: "applies and holds", idle: "does not apply" }[rule.state];
    }
    this.showFieldErrors(fieldErrors);
    return { valid: valid && !fieldErrors.size, config, fieldErrors, other };
  }

  showFieldErrors(errors) {
    for (const field of this.fields.values()) {
      const shown = this.showAll || field.dirty;
      const messages = shown ? errors.get(field.key) || [] : [];
      field.error.textContent = messages.join("; ");
      field.wrapper.classList.toggle("invalid", messages.length > 0);
      field.input.setAttribute("aria-invalid", messages.length ? "true" : "false");
    }
  }

  // Problems the server found (`modelforge validate --json` errors): at their field, or returned.
  showServerErrors(errors) {
    const leftover = [];
    const byField = new Map();
    for (const error of errors) {
      const key = String(error.path || "");
      if (this.fields.has(key)) {
        if (!byField.has(key)) byField.set(key, []);
        byField.get(key).push(error.message);
      } else {
        leftover.push(error);
      }
    }
    for (const [key, messages] of byField) {
      const field = this.fields.get(key);
      field.error.textContent = messages.join("; ");
      field.wrapper.classList.add("invalid");
      field.input.setAttribute("aria-invalid", "true");
    }
    return leftover;
  }

  // The resolved config from the server: untouched fields show what will really train.
  showResolved(config, sources) {
    for (const field of this.fields.values()) {
      if (field.dirty) continue;
      const parts = field.key.split(".");
      let value = config;
      for (const part of parts) value = value == null ? undefined : value[part];
      if (value === undefined) continue;
      if (!field.required) this.setInput(field, value);
      const source = sources[field.key] || "default";
      field.source.textContent = source.startsWith("profile:") ? source.replace("profile:", "profile ") : "";
    }
  }
}

function coerceEnum(prop, text) {
  const match = prop.enum.find((value) => String(value) === text);
  return match === undefined ? text : match;
}
