/* hashkit: Celeriac's first-party C plugin, checksums and hashes of text.
 * Built by `make example-plugins` with `celeriac plugins build plugins/hashkit`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"

/* The text argument, or a TypeError. */
#define TEXT_ARG(call, name, text)                                                   \
    if (celeriac_arg_string((call), 0, &(text)) != 0)                                \
        return celeriac_fail("TypeError", name "() takes one string argument");

/* crc32(text): the CRC-32 (IEEE, as zlib.crc32) of the text's UTF-8 bytes. */
static char *crc32(const celeriac_call *call) {
    char *text;
    TEXT_ARG(call, "crc32", text);
    uint32_t crc = 0xFFFFFFFFu;
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        crc ^= *c;
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1u));
    }
    free(text);
    return celeriac_printf("%u", crc ^ 0xFFFFFFFFu);
}

/* fnv1a(text): the 64-bit FNV-1a hash of the text, as 16 hex digits. */
static char *fnv1a(const celeriac_call *call) {
    char *text;
    TEXT_ARG(call, "fnv1a", text);
    uint64_t hash = 0xcbf29ce484222325ull;
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        hash ^= *c;
        hash *= 0x100000001b3ull;
    }
    free(text);
    return celeriac_printf("\"%016llx\"", (unsigned long long)hash);
}

/* adler32(text): the Adler-32 checksum (as zlib.adler32). */
static char *adler32(const celeriac_call *call) {
    char *text;
    TEXT_ARG(call, "adler32", text);
    uint32_t a = 1, b = 0;
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        a = (a + *c) % 65521u;
        b = (b + a) % 65521u;
    }
    free(text);
    return celeriac_printf("%u", (b << 16) | a);
}

const celeriac_task celeriac_tasks[] = {
    {"hashkit.crc32", "CRC-32 of a text, as zlib.crc32.", crc32},
    {"hashkit.fnv1a", "64-bit FNV-1a hash of a text, in hex.", fnv1a},
    {"hashkit.adler32", "Adler-32 checksum of a text, as zlib.adler32.", adler32},
    {0},
};
