// jsonkit: Celeriac's first-party JavaScript plugin, JSON and templating.
// Built by `make example-plugins` with `celeriac plugins build plugins/jsonkit`.

import { task, TaskError } from "./celeriac.js";

export const render = task(
  function render(template, values) {
    return template.replace(/\{(\w+)\}/g, (_, key) => {
      if (!(key in values)) throw new TaskError("KeyError", key);
      return String(values[key]);
    });
  },
  { doc: "Fill {placeholders} in a template from an object." },
);

export const pick = task(
  function pick(document, path) {
    let value = document;
    for (const key of path.split(".")) {
      if (value === null || typeof value !== "object" || !(key in value)) {
        throw new TaskError("KeyError", path);
      }
      value = value[key];
    }
    return value;
  },
  { doc: "The value at a dotted path (a.b.0) in a JSON document." },
);

export const merge = task(
  function merge(...documents) {
    const deep = (into, from) => {
      for (const [key, value] of Object.entries(from)) {
        const both = value && typeof value === "object" && !Array.isArray(value) && into[key] && typeof into[key] === "object";
        into[key] = both ? deep({ ...into[key] }, value) : value;
      }
      return into;
    };
    return documents.reduce((merged, doc) => deep(merged, doc), {});
  },
  { doc: "Deep-merge JSON objects, later ones winning." },
);

export const echo = task(function echo(...args) {
  return args;
}, { doc: "Return the arguments: the trivial task the benchmark measures." });
