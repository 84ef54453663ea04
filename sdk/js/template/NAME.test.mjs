// The tasks are plain functions: `node --test` runs this, no Wasm needed.
import assert from "node:assert/strict";
import test from "node:test";

import { shout } from "./{{name}}.js";

test("shout", () => {
  assert.equal(shout("hello"), "HELLO!");
  assert.throws(() => shout(""), /nothing to shout/);
});
