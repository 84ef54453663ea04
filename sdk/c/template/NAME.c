/* {{name}}: a Celeriac plugin in C. Each entry of celeriac_tasks is a Celery task;
 * arguments and results are JSON. Build with `celeriac plugins build .` */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"

/* shout(text): upper-case a text, with an exclamation mark. */
static char *shout(const celeriac_call *call) {
    char *text;
    if (celeriac_arg_string(call, 0, &text) != 0) return celeriac_fail("TypeError", "shout() takes one string");
    if (!*text) {
        free(text);
        return celeriac_fail("ValueError", "nothing to shout");
    }
    for (char *c = text; *c; c++) *c = (char)toupper((unsigned char)*c);
    char *loud = celeriac_printf("%s!", text);
    char *result = celeriac_json_string(loud);
    free(text);
    free(loud);
    return result;
}

const celeriac_task celeriac_tasks[] = {
    {"{{name}}.shout", "Upper-case a text, with an exclamation mark.", shout},
    {0},
};
