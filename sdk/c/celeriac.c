/* The Celeriac C SDK: the component's exports over the plugin's `celeriac_tasks`, and
 * small JSON helpers. The bindings (plugin.h, plugin.c) are generated from
 * wit/celeriac.wit by `wit-bindgen c` (see sdk/c/README or `make c-bindings`). */
#include "celeriac.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

/* The bindings pull in the object file that carries the component type; `plugins build`
 * embeds that type itself (wit-component), so an empty definition satisfies the link. */
void __component_type_object_force_link_plugin(void) {}

/* What the running task reported instead of a result. */
static exports_celeriac_task_handler_task_error_t pending_error;
static bool has_error;

static void set_string(plugin_string_t *out, const char *text) {
    plugin_string_dup(out, text ? text : "");
}

char *celeriac_fail(const char *exc_type, const char *message) {
    celeriac_task_types_failure_t *failure = &pending_error.val.failure;
    memset(&pending_error, 0, sizeof pending_error);
    pending_error.tag = CELERIAC_TASK_TYPES_TASK_ERROR_FAILURE;
    set_string(&failure->exc_type, exc_type);
    /* The names Python has as builtins arrive in Celery as the same classes. */
    static const char *builtins[] = {"Exception", "ArithmeticError", "AssertionError", "AttributeError",
        "IndexError", "KeyError", "LookupError", "MemoryError", "NotImplementedError", "OSError",
        "OverflowError", "PermissionError", "RuntimeError", "TimeoutError", "TypeError", "ValueError",
        "ZeroDivisionError", NULL};
    const char *module = "celeriac.tasks";
    for (const char **name = builtins; *name; name++) {
        if (strcmp(*name, exc_type) == 0) module = "builtins";
    }
    set_string(&failure->exc_module, module);
    set_string(&failure->message, message);
    failure->traceback.is_some = false;
    has_error = true;
    return NULL;
}

char *celeriac_retry(double countdown, int max_retries) {
    memset(&pending_error, 0, sizeof pending_error);
    pending_error.tag = CELERIAC_TASK_TYPES_TASK_ERROR_RETRY;
    pending_error.val.retry.countdown.is_some = true;
    pending_error.val.retry.countdown.val = countdown;
    pending_error.val.retry.max_retries.is_some = max_retries >= 0;
    pending_error.val.retry.max_retries.val = max_retries >= 0 ? (uint32_t)max_retries : 0;
    pending_error.val.retry.reason.is_some = false;
    has_error = true;
    return NULL;
}

void celeriac_log(const char *message) {
    plugin_string_t text;
    plugin_string_set(&text, message);
    celeriac_task_host_log(CELERIAC_TASK_TYPES_LOG_LEVEL_INFO, &text);
}

void celeriac_update_state(const char *state, const char *meta_json) {
    plugin_string_t name, meta;
    plugin_string_set(&name, state);
    plugin_string_set(&meta, meta_json);
    celeriac_task_host_update_state(&name, &meta);
}

char *celeriac_printf(const char *format, ...) {
    va_list args;
    va_start(args, format);
    int size = vsnprintf(NULL, 0, format, args);
    va_end(args);
    char *out = malloc((size_t)size + 1);
    if (!out) return NULL;
    va_start(args, format);
    vsnprintf(out, (size_t)size + 1, format, args);
    va_end(args);
    return out;
}

char *celeriac_json_string(const char *text) {
    size_t len = strlen(text);
    char *out = malloc(len * 6 + 3), *at = out;
    if (!out) return NULL;
    *at++ = '"';
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') {
            *at++ = '\\';
            *at++ = (char)*c;
        } else if (*c < 0x20) {
            at += sprintf(at, "\\u%04x", *c);
        } else {
            *at++ = (char)*c;
        }
    }
    *at++ = '"';
    *at = '\0';
    return out;
}

/* --- reading arguments: just enough JSON to find the n-th value of an array --- */

static const char *skip_space(const char *at) {
    while (*at == ' ' || *at == '\t' || *at == '\n' || *at == '\r') at++;
    return at;
}

/* The end of the JSON value at `at`, or NULL if it is malformed. */
static const char *skip_value(const char *at) {
    at = skip_space(at);
    if (*at == '"') {
        for (at++; *at && *at != '"'; at++) {
            if (*at == '\\' && !*++at) return NULL;
        }
        return *at ? at + 1 : NULL;
    }
    if (*at == '[' || *at == '{') {
        char close = *at == '[' ? ']' : '}';
        at = skip_space(at + 1);
        if (*at == close) return at + 1;
        for (;;) {
            if (close == '}') {
                if (!(at = skip_value(at))) return NULL; /* the key */
                at = skip_space(at);
                if (*at++ != ':') return NULL;
            }
            if (!(at = skip_value(at))) return NULL;
            at = skip_space(at);
            if (*at == close) return at + 1;
            if (*at++ != ',') return NULL;
        }
    }
    const char *start = at;
    while (*at && !strchr(",]} \t\r\n", *at)) at++;
    return at > start ? at : NULL;
}

/* The start of positional argument `index`, or NULL. */
static const char *argument(const celeriac_call *call, size_t index) {
    const char *at = skip_space(call->args_json);
    if (*at++ != '[') return NULL;
    for (size_t i = 0;; i++) {
        at = skip_space(at);
        if (*at == ']' || !*at) return NULL;
        if (i == index) return at;
        if (!(at = skip_value(at))) return NULL;
        at = skip_space(at);
        if (*at++ != ',') return NULL;
    }
}

static void put_utf8(char **out, unsigned long code) {
    char *o = *out;
    if (code < 0x80) {
        *o++ = (char)code;
    } else if (code < 0x800) {
        *o++ = (char)(0xC0 | (code >> 6));
        *o++ = (char)(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
        *o++ = (char)(0xE0 | (code >> 12));
        *o++ = (char)(0x80 | ((code >> 6) & 0x3F));
        *o++ = (char)(0x80 | (code & 0x3F));
    } else {
        *o++ = (char)(0xF0 | (code >> 18));
        *o++ = (char)(0x80 | ((code >> 12) & 0x3F));
        *o++ = (char)(0x80 | ((code >> 6) & 0x3F));
        *o++ = (char)(0x80 | (code & 0x3F));
    }
    *out = o;
}

int celeriac_arg_string(const celeriac_call *call, size_t index, char **out) {
    const char *at = argument(call, index), *end;
    if (!at || *at != '"' || !(end = skip_value(at))) return -1;
    char *text = malloc((size_t)(end - at) + 1), *o = text;
    if (!text) return -1;
    for (at++; at < end - 1; at++) {
        if (*at != '\\') {
            *o++ = *at;
            continue;
        }
        switch (*++at) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned long code = strtoul((char[]){at[1], at[2], at[3], at[4], 0}, NULL, 16);
            at += 4;
            if (code >= 0xD800 && code < 0xDC00 && at[1] == '\\' && at[2] == 'u') {
                unsigned long low = strtoul((char[]){at[3], at[4], at[5], at[6], 0}, NULL, 16);
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                at += 6;
            }
            put_utf8(&o, code);
            break;
        }
        default: *o++ = *at; /* \" \\ \/ */
        }
    }
    *o = '\0';
    *out = text;
    return 0;
}

int celeriac_arg_int(const celeriac_call *call, size_t index, long long *out) {
    const char *at = argument(call, index);
    char *end;
    if (!at) return -1;
    long long value = strtoll(at, &end, 10);
    if (end == at || *end == '.' || *end == 'e' || *end == 'E') return -1;
    *out = value;
    return 0;
}

/* --- the component's exports --- */

void exports_celeriac_task_handler_tasks(exports_celeriac_task_handler_list_task_info_t *ret) {
    size_t count = 0;
    while (celeriac_tasks[count].name) count++;
    ret->len = count;
    ret->ptr = calloc(count ? count : 1, sizeof *ret->ptr);
    for (size_t i = 0; i < count; i++) {
        set_string(&ret->ptr[i].name, celeriac_tasks[i].name);
        set_string(&ret->ptr[i].doc, celeriac_tasks[i].doc);
    }
}

static char *terminated(const plugin_string_t *text) {
    char *out = malloc(text->len + 1);
    if (!out) return NULL;
    memcpy(out, text->ptr, text->len);
    out[text->len] = '\0';
    return out;
}

bool exports_celeriac_task_handler_run(exports_celeriac_task_handler_task_context_t *ctx,
                                       plugin_string_t *args_json, plugin_string_t *kwargs_json,
                                       plugin_string_t *ret, exports_celeriac_task_handler_task_error_t *err) {
    char *name = terminated(&ctx->name), *id = terminated(&ctx->id);
    char *args = terminated(args_json), *kwargs = terminated(kwargs_json);
    celeriac_call call = {id, name, args, kwargs};
    char *result = NULL;
    has_error = false;
    const celeriac_task *task = celeriac_tasks;
    while (task->name && strcmp(task->name, name) != 0) task++;
    if (!task->name) {
        celeriac_fail("NotRegistered", name);
    } else {
        result = task->run(&call);
        if (!result && !has_error) celeriac_fail("RuntimeError", "the task returned no result");
    }
    free(name), free(id), free(args), free(kwargs);
    /* The parameters belong to the callee: freed here, or a kept instance leaks per task. */
    exports_celeriac_task_handler_task_context_free(ctx);
    plugin_string_free(args_json);
    plugin_string_free(kwargs_json);
    if (has_error) {
        free(result);
        *err = pending_error;
        return false;
    }
    /* The string is handed over to the bindings, which free it after the call. */
    ret->ptr = (uint8_t *)result;
    ret->len = strlen(result);
    return true;
}
