// `node --test plugins/jsonkit` (after `make example-plugins`, which puts the SDK beside it)
import assert from "node:assert/strict";
import test from "node:test";

import { merge, pick, render } from "./jsonkit.js";

test("render", () => {
  assert.equal(render("Hi {name}!", { name: "Ada" }), "Hi Ada!");
  assert.throws(() => render("{missing}", {}), /missing/);
});

test("pick and merge", () => {
  assert.equal(pick({ a: { b: [5, 6] } }, "a.b.1"), 6);
  assert.deepEqual(merge({ a: { x: 1 } }, { a: { y: 2 }, b: 3 }), { a: { x: 1, y: 2 }, b: 3 });
});
