/* Celeriac plugins in C.
 *
 * A plugin defines the table `celeriac_tasks` (ending with {0}); each task reads its
 * arguments from the call (JSON, as Celery sends them) and returns its result as JSON
 * text it allocated with malloc, or NULL after `celeriac_fail` (a Python exception in
 * Celery) or `celeriac_retry`. `celeriac plugins build` compiles the folder with clang for
 * wasm32-wasi and makes it a component.
 */
#ifndef CELERIAC_H
#define CELERIAC_H

#include <stddef.h>

typedef struct {
    const char *task_id;
    const char *task_name;
    const char *args_json;   /* a JSON array, NUL-terminated */
    const char *kwargs_json; /* a JSON object, NUL-terminated */
} celeriac_call;

typedef char *(*celeriac_fn)(const celeriac_call *call);

typedef struct {
    const char *name; /* e.g. "hashkit.crc32" */
    const char *doc;  /* one line, shown by `celeriac plugins list` */
    celeriac_fn run;
} celeriac_task;

/* Defined by the plugin; the last entry is {0}. */
extern const celeriac_task celeriac_tasks[];

/* Fail the task with a Python exception type ("ValueError") and message; returns NULL. */
char *celeriac_fail(const char *exc_type, const char *message);
/* Ask for a retry in `countdown` seconds, at most `max_retries` times (< 0: the default);
 * returns NULL. */
char *celeriac_retry(double countdown, int max_retries);

/* Positional argument `index` as a string (malloc'd; free it) or integer: 0, or -1 if
 * missing or of another type. */
int celeriac_arg_string(const celeriac_call *call, size_t index, char **out);
int celeriac_arg_int(const celeriac_call *call, size_t index, long long *out);

/* `text` as a JSON string literal (malloc'd), and printf into malloc'd text. */
char *celeriac_json_string(const char *text);
char *celeriac_printf(const char *format, ...);

/* A line in the worker's log; progress (`meta_json` is JSON) for AsyncResult.info. */
void celeriac_log(const char *message);
void celeriac_update_state(const char *state, const char *meta_json);

#endif
