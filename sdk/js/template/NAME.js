// {{name}}: a Celeriac plugin in JavaScript. Each task is a Celery task named
// {{name}}.<function>; arguments and results are JSON. Build with `celeriac plugins build .`

import { task, TaskError } from "./celeriac.js";

export const shout = task(
  function shout(text) {
    if (!text) throw new TaskError("ValueError", "nothing to shout");
    return text.toUpperCase() + "!";
  },
  { doc: "Upper-case a text, with an exclamation mark." },
);
