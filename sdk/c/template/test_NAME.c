/* The task as a plain C function: `make test` runs this natively, no Wasm needed
 * (`celeriac plugins build` leaves test_*.c files out of the plugin). */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"

static char *run(const char *task, const char *args_json) {
    for (const celeriac_task *t = celeriac_tasks; t->name; t++) {
        if (strcmp(t->name, task) == 0) {
            celeriac_call call = {"test", task, args_json, "{}"};
            return t->run(&call);
        }
    }
    return NULL;
}

int main(void) {
    char *loud = run("{{name}}.shout", "[\"hello\"]");
    assert(loud && strcmp(loud, "\"HELLO!\"") == 0);
    free(loud);
    assert(run("{{name}}.shout", "[\"\"]") == NULL); /* fails with ValueError */
    puts("ok");
    return 0;
}
