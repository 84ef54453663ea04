/* The worker's side of the bindings for running a C plugin's tests natively (with the
 * machine's cc, not in Wasm): log lines go to stderr, progress and the soft time limit do
 * nothing. Link it with the plugin's test, never into the plugin itself. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

void __wasm_import_celeriac_task_host_log(int32_t level, uint8_t *message, size_t len) {
    fprintf(stderr, "[log %d] %.*s\n", (int)level, (int)len, (const char *)message);
}

void __wasm_import_celeriac_task_host_update_state(uint8_t *state, size_t state_len, uint8_t *meta, size_t meta_len) {
    (void)state, (void)state_len, (void)meta, (void)meta_len;
}

int32_t __wasm_import_celeriac_task_host_soft_time_limit_exceeded(void) {
    return 0;
}
