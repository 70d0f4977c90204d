// The canonical ModelForge training-config schema, for `require("@modelforge/training-config-schema")`.
module.exports = require("./training-config.schema.json");
