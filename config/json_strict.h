/* json_strict.h — cJSON parsing for text vitd does not trust (request bodies, config files, checkpoints).
 *
 * Four rules cJSON does not enforce by itself:
 *   - one value and nothing after it but whitespace;
 *   - no object with the same key twice (cJSON keeps both and lookups return the first, while most parsers keep
 *     the last: a validating proxy and vitd could read different requests). Refused, with the key's path;
 *   - a memory budget: a body of small values ([1,1,1,...]) costs about 40 times its size as a tree. The tree's
 *     allocations are counted and refused past the budget, so a parse costs at most the caller's bound;
 *   - strings as RFC 8259 has them: no raw control characters, UTF-8 throughout, and no \u0000 (vitd's strings
 *     are C strings: a NUL would cut one short, so "<base64>\u0000garbage" would pass as its first part).
 * With an allocator (a request's arena) the tree lives in it and dies with it: never cJSON_Delete such a tree,
 * nor cJSON_free its strings. Without one the tree is malloc'd and the caller deletes it.
 *
 * The budget is counted through cJSON's global hooks, installed once by json_strict_init() (call it before
 * threads start; json_parse_strict calls it too) and otherwise plain malloc and free. Thread-safe after that.
 */
#ifndef VITD_JSON_STRICT_H
#define VITD_JSON_STRICT_H

#include <stddef.h>

#include <cJSON.h>

#include "vitd.h"

typedef struct {
    void *(*alloc)(void *ctx, size_t n); /* where the tree goes; NULL: malloc */
    void *ctx;
    size_t budget;                       /* bytes the tree may take; 0: no bound */
} json_alloc;

/* Installs the counting hooks (idempotent). */
void json_strict_init(void);

/* Parses text[0, len) as one JSON value. al may be NULL (malloc, no budget). On success returns the root. On
 * failure returns NULL and fills err: VITD_E_INVALID_ARG for a syntax error (with its byte offset, also in
 * *err_at when err_at is not NULL), a string rule broken (with its offset), text after the value, or a duplicate
 * key (with its path, e.g.
 * $.parameters.dtype); VITD_E_TOO_LARGE past the budget. The message starts with "invalid JSON" or "JSON". */
cJSON *json_parse_strict(const char *text, size_t len, const json_alloc *al, size_t *err_at, vitd_err *err);

/* The budget vitd gives a request body of len bytes: twice its size plus 1 MiB (strings are copied once; a body of
 * base64 images needs little more than its size). */
size_t json_body_budget(size_t len);

#endif
