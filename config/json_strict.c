/* json_strict.c — strict, bounded cJSON parsing (json_strict.h).
 *
 * cJSON allocates through global hooks. Ours look at a thread-local parse state: outside json_parse_strict they
 * are malloc and free; inside, each allocation is counted against the budget and taken from the caller's
 * allocator when there is one (frees are then no-ops: the arena frees everything at once). cJSON gives up
 * cleanly when an allocation fails, so a refused allocation ends the parse, and the state says why. */
#include "json_strict.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct {
    const json_alloc *al;
    size_t used;
    bool over;
} parse_state;

static _Thread_local parse_state *tl_parse;

static void *hook_malloc(size_t n) {
    parse_state *p = tl_parse;
    if (!p) return malloc(n);
    /* counted as an arena takes it (16-byte aligned); cJSON's short-lived number buffers count too, since an
     * arena does not take them back */
    size_t an = (n + 15) & ~(size_t)15;
    if (an < n || (p->al->budget && (an > p->al->budget || p->used > p->al->budget - an))) {
        p->over = true;
        return NULL;
    }
    p->used += an;
    return p->al->alloc ? p->al->alloc(p->al->ctx, n) : malloc(n);
}

static void hook_free(void *ptr) {
    parse_state *p = tl_parse;
    if (p && p->al->alloc) return; /* arena memory, freed with the arena */
    free(ptr);
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void install_hooks(void) {
    cJSON_Hooks h = {.malloc_fn = hook_malloc, .free_fn = hook_free};
    cJSON_InitHooks(&h);
}

void json_strict_init(void) { pthread_once(&hooks_once, install_hooks); }

size_t json_body_budget(size_t len) {
    size_t slack = (size_t)1 << 20;
    return len > (SIZE_MAX - slack) / 2 ? SIZE_MAX : 2 * len + slack;
}

/* ---- duplicate keys ---- */

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* path holds the value's path ($, $.key, $[3]); returns the first duplicated key of any object below, or NULL
 * (*at then names the object holding it). Depth is bounded by cJSON's nesting limit. */
static const char *find_duplicate(const cJSON *v, char *path, size_t plen, size_t cap, char *at) {
    if (!cJSON_IsObject(v) && !cJSON_IsArray(v)) return NULL;
    if (cJSON_IsObject(v)) {
        int n = 0;
        for (const cJSON *c = v->child; c; c = c->next) n++;
        const char *dup = NULL;
        if (n > 1 && n <= 16) {
            for (const cJSON *a = v->child; a && !dup; a = a->next)
                for (const cJSON *b = a->next; b && !dup; b = b->next)
                    if (a->string && b->string && !strcmp(a->string, b->string)) dup = a->string;
        } else if (n > 16) {
            const char **names = xmalloc((size_t)n * sizeof *names); /* never skip the check for want of memory */
            int k = 0;
            for (const cJSON *c = v->child; c; c = c->next) names[k++] = c->string ? c->string : "";
            qsort(names, (size_t)n, sizeof *names, cmp_names);
            for (int i = 1; i < n && !dup; i++)
                if (!strcmp(names[i - 1], names[i])) dup = names[i];
            free(names);
        }
        if (dup) {
            snprintf(at, 160, "%s", path);
            return dup;
        }
    }
    int i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        int w = cJSON_IsObject(v) ? snprintf(path + plen, cap - plen, ".%.40s", c->string ? c->string : "")
                                  : snprintf(path + plen, cap - plen, "[%d]", i);
        size_t np = plen + (w > 0 ? (size_t)w : 0);
        if (np >= cap) np = cap - 1;
        const char *d = find_duplicate(c, path, np, cap, at);
        path[plen] = '\0';
        if (d) return d;
    }
    return NULL;
}

/* ---- strings ----
 * RFC 8259 sections 7 and 8.1, which cJSON does not check: a string holds no raw control character (U+0000 to
 * U+001F must be escaped), and the text is UTF-8. vitd adds: no \u0000 escape, since every string is used as a
 * C string and a NUL would cut it short ("<base64>\u0000garbage" would decode the part before it). One pass over
 * the text, before the parse; on a problem returns its message's middle part and sets *at. */

/* Length of the well-formed UTF-8 sequence at p (2-4; no overlongs, surrogates or values past U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, size_t left) {
    const unsigned char c = p[0];
    size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || n > left) return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
    if (c == 0xED && p[1] > 0x9F) return 0; /* surrogate */
    if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
    if (c == 0xF4 && p[1] > 0x8F) return 0; /* past U+10FFFF */
    return n;
}

static const char *scan_strings(const char *text, size_t len, size_t *at) {
    const unsigned char *t = (const unsigned char *)text;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        const unsigned char c = t[i];
        if (c >= 0x80) {
            size_t n = utf8_len(t + i, len - i);
            if (!n) {
                *at = i;
                return "a byte that is not UTF-8";
            }
            i += n - 1;
            continue;
        }
        if (!in_str) {
            in_str = c == '"';
            continue;
        }
        if (c == '"') {
            in_str = false;
        } else if (c < 0x20) {
            *at = i;
            return "a raw control character in a string (escape it)";
        } else if (c == '\\' && i + 1 < len) {
            if (t[i + 1] == 'u' && i + 5 < len && !memcmp(t + i + 2, "0000", 4)) {
                *at = i;
                return "\\u0000 in a string (NUL is not accepted)";
            }
            i++; /* the escaped character (the hex digits of \u are plain ASCII) */
        }
    }
    return NULL;
}

/* ---- parse ---- */

cJSON *json_parse_strict(const char *text, size_t len, const json_alloc *al, size_t *err_at, vitd_err *err) {
    json_strict_init();
    size_t bad_at = 0;
    const char *bad = scan_strings(text, len, &bad_at);
    if (bad) {
        vitd_fail(err, VITD_E_INVALID_ARG, "invalid JSON: %s at byte %zu", bad, bad_at);
        if (err_at) *err_at = bad_at;
        return NULL;
    }
    static const json_alloc plain = {0};
    parse_state st = {.al = al ? al : &plain};
    const char *end = NULL;
    tl_parse = &st;
    cJSON *root = len ? cJSON_ParseWithLengthOpts(text, len, &end, 0) : NULL;
    tl_parse = NULL;
    if (!root) {
        if (st.over)
            vitd_fail(err, VITD_E_TOO_LARGE, "JSON of %zu bytes needs more than %zu bytes of memory to parse (too "
                      "many small values for its size)", len, st.al->budget);
        else
            vitd_fail(err, VITD_E_INVALID_ARG, "invalid JSON (near byte %zu)",
                      end && end >= text ? (size_t)(end - text) : 0);
        if (err_at) *err_at = end && end >= text ? (size_t)(end - text) : 0;
        return NULL;
    }
    size_t at = (size_t)(end - text);
    while (at < len && (text[at] == ' ' || text[at] == '\t' || text[at] == '\r' || text[at] == '\n')) at++;
    const char *dup = NULL;
    char path[160] = "$", holder[160] = "";
    if (at < len) {
        vitd_fail(err, VITD_E_INVALID_ARG, "invalid JSON: unexpected text after the value at byte %zu", at);
        if (err_at) *err_at = at;
    }
    else if ((dup = find_duplicate(root, path, 1, sizeof path, holder)) != NULL)
        vitd_fail(err, VITD_E_INVALID_ARG, "invalid JSON: key \"%.64s\" appears twice in the object at %s (keys "
                  "must be unique)", dup, holder);
    if (at < len || dup) {
        if (!st.al->alloc) cJSON_Delete(root);
        return NULL;
    }
    return root;
}
