/* labels: unit */
/* test_json_strict.c — config/json_strict.c: duplicate keys refused with their path (top level, nested, inside
 * arrays, objects of more than 16 keys), one value and nothing after it, syntax errors with their offset, and the
 * memory budget: a body of small values ([1,1,...] under an ignored key, the shape that cost 40x its size as a
 * tree) is refused with 413 inside the budget, while base64-sized strings pass; an arena tree dies with the arena
 * and every byte it took is counted. The same through body.c's request parser (body_json_parse). */
#include <stdint.h>

#include "arena.h"
#include "body.h"
#include "check.h"
#include "util.h"
#include "json_strict.h"

static void expect_fail(const char *js, vitd_status code, const char *needle) {
    vitd_err err = {0};
    size_t at = 12345;
    cJSON *r = json_parse_strict(js, strlen(js), NULL, &at, &err);
    CHECK_MSG(r == NULL, "%s: parsed", js);
    if (r) cJSON_Delete(r);
    CHECK_MSG(err.code == code, "%s: status %s, want %s (%s)", js, vitd_status_name(err.code),
              vitd_status_name(code), err.msg);
    CHECK_STR_CONTAINS(err.msg, needle);
}

/* The same with an explicit length (texts holding a NUL byte). */
static void expect_fail_n(const char *js, size_t len, const char *needle) {
    vitd_err err = {0};
    cJSON *r = json_parse_strict(js, len, NULL, NULL, &err);
    CHECK_MSG(r == NULL, "%s: parsed", js);
    if (r) cJSON_Delete(r);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, err.code);
    CHECK_STR_CONTAINS(err.msg, needle);
}

static void expect_ok(const char *js) {
    vitd_err err = {0};
    cJSON *r = json_parse_strict(js, strlen(js), NULL, NULL, &err);
    CHECK_MSG(r != NULL, "%s: %s", js, err.msg);
    cJSON_Delete(r);
}

static void test_rules(void) {
    expect_ok("{\"a\": 1, \"b\": {\"a\": 2}, \"c\": [{\"a\": 1}, {\"a\": 2}]}  \n");
    expect_ok("[1, 2, 3]");
    expect_ok("\"just a string\"");
    expect_fail("{\"a\": 1, \"a\": 2}", VITD_E_INVALID_ARG, "key \"a\" appears twice in the object at $");
    expect_fail("{\"images\": [\"x\"], \"parameters\": {\"dtype\": \"f\", \"dtype\": \"g\"}}", VITD_E_INVALID_ARG,
                "key \"dtype\" appears twice in the object at $.parameters");
    expect_fail("{\"inputs\": [{\"name\": \"a\"}, {\"name\": \"b\", \"name\": \"c\"}]}", VITD_E_INVALID_ARG,
                "appears twice in the object at $.inputs[1]");
    /* more than 16 keys: the sorted check */
    char big[4096];
    size_t n = (size_t)snprintf(big, sizeof big, "{");
    for (int i = 0; i < 40; i++) n += (size_t)snprintf(big + n, sizeof big - n, "\"k%02d\": %d, ", i, i);
    snprintf(big + n, sizeof big - n, "\"k40\": 0}");
    expect_ok(big);
    snprintf(big + n, sizeof big - n, "\"k17\": 0}");
    expect_fail(big, VITD_E_INVALID_ARG, "key \"k17\" appears twice");
    expect_fail("{\"a\": 1} {\"b\": 2}", VITD_E_INVALID_ARG, "unexpected text after the value at byte 9");
    expect_fail("{\"a\": [1, 2,, 3]}", VITD_E_INVALID_ARG, "invalid JSON (near byte 12)");
    expect_fail("", VITD_E_INVALID_ARG, "invalid JSON");
    /* strings: no NUL (escaped or raw), no raw control characters, UTF-8 only (a black-box test found
     * "<base64>\u0000garbage" accepted as its first part, and keys with bytes 0xFF 0xFE) */
    expect_fail("{\"images\": [\"aGVsbG8=\\u0000!!!\"]}", VITD_E_INVALID_ARG,
                "\\u0000 in a string (NUL is not accepted) at byte 21");
    expect_fail("{\"k\\u0000x\": 1}", VITD_E_INVALID_ARG, "u0000");
    expect_fail("{\"a\": \"x\x01y\"}", VITD_E_INVALID_ARG, "raw control character in a string (escape it) at byte 8");
    expect_fail("[\"a\tb\"]", VITD_E_INVALID_ARG, "raw control character");
    expect_fail("[\"a\nb\"]", VITD_E_INVALID_ARG, "raw control character");
    expect_fail_n("[\"a\0b\"]", 7, "raw control character in a string (escape it) at byte 3");
    expect_fail("{\"x\xff\xfe\": 1}", VITD_E_INVALID_ARG, "a byte that is not UTF-8 at byte 3");
    expect_fail("[\"\xc0\xaf\"]", VITD_E_INVALID_ARG, "not UTF-8 at byte 2");         /* overlong '/' */
    expect_fail("[\"\xed\xa0\x80\"]", VITD_E_INVALID_ARG, "not UTF-8 at byte 2");     /* a surrogate */
    expect_fail("[\"\xf4\x90\x80\x80\"]", VITD_E_INVALID_ARG, "not UTF-8");          /* past U+10FFFF */
    expect_fail("[\"\xe2\x82\"]", VITD_E_INVALID_ARG, "not UTF-8");                  /* cut short */
    /* e-acute, euro sign, an emoji; escapes */
    expect_ok("[\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\", \"\\u00e9\\t\\n\\\"\"]");
    expect_ok("[\"\\\\u0000\"]"); /* an escaped backslash, then the letters u0000 */
    expect_ok("{\n\t\"a\" :\r\n 1 }");  /* control characters outside strings are whitespace */
    vitd_err err = {0};
    size_t at = 0;
    CHECK(json_parse_strict("{\n\"a\": tru}", 11, NULL, &at, &err) == NULL);
    CHECK_MSG(at >= 6 && at <= 10, "syntax error offset %zu", at);
}

static void *arena_cb(void *ctx, size_t n) { return arena_alloc(ctx, n); }

/* {"ignored": [1,1,1,...], "images": []}: n_values small values. */
static char *number_body(size_t n_values, size_t *len) {
    char *s = xmalloc(2 * n_values + 64);
    size_t k = (size_t)sprintf(s, "{\"ignored\": [");
    for (size_t i = 0; i < n_values; i++) {
        s[k++] = '1';
        s[k++] = i + 1 < n_values ? ',' : ']';
    }
    k += (size_t)sprintf(s + k, ", \"images\": []}");
    *len = k;
    return s;
}

static void test_budget(void) {
    /* 4 Mi small values in 8 MiB: about 300 MiB as an unbounded tree */
    size_t len = 0;
    char *js = number_body((size_t)4 << 20, &len);
    arena *a = arena_create(0);
    json_alloc al = {.alloc = arena_cb, .ctx = a, .budget = json_body_budget(len)};
    vitd_err err = {0};
    cJSON *r = json_parse_strict(js, len, &al, NULL, &err);
    CHECK(r == NULL);
    CHECK_EQ_INT(VITD_E_TOO_LARGE, err.code);
    CHECK_STR_CONTAINS(err.msg, "needs more than");
    printf("  %zu-byte body of small values: %s; the arena holds %zu bytes (budget %zu)\n", len,
           vitd_status_name(err.code), arena_used(a), json_body_budget(len));
    CHECK_MSG(arena_used(a) <= json_body_budget(len) + ((size_t)64 << 10), "arena %zu over the budget %zu",
              arena_used(a), json_body_budget(len));
    arena_free(a);
    /* the same through the request parser: 413 with the hint */
    a = arena_create(0);
    r = body_json_parse(a, js, len, &err);
    CHECK(r == NULL && err.code == VITD_E_TOO_LARGE);
    CHECK_STR_CONTAINS(err.msg, "send images as base64 strings");
    arena_free(a);
    free(js);
    /* a small body of many values still fits: the 1 MiB of slack */
    js = number_body(4000, &len);
    a = arena_create(0);
    r = body_json_parse(a, js, len, &err);
    CHECK_MSG(r != NULL, "4000 values: %s", err.msg);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "ignored")) == 4000);
    arena_free(a); /* the tree with it: never cJSON_Delete'd */
    free(js);
    /* a base64-sized string: about its own size, far inside the budget */
    size_t sl = (size_t)6 << 20;
    char *big = xmalloc(sl + 32);
    size_t k = (size_t)sprintf(big, "{\"images\": [\"");
    memset(big + k, 'Q', sl);
    k += sl;
    k += (size_t)sprintf(big + k, "\"]}");
    a = arena_create(0);
    r = body_json_parse(a, big, k, &err);
    CHECK_MSG(r != NULL, "one 6 MiB string: %s", err.msg);
    printf("  %zu-byte body of one string: parsed, arena %zu bytes\n", k, arena_used(a));
    CHECK(arena_used(a) < k + ((size_t)64 << 10));
    arena_free(a);
    free(big);
    /* outside a parse the hooks are plain malloc and free: a tree built and printed by cJSON */
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "x", 1);
    char *txt = cJSON_PrintUnformatted(o);
    CHECK(txt && !strcmp(txt, "{\"x\":1}"));
    cJSON_free(txt);
    cJSON_Delete(o);
}

int main(void) {
    json_strict_init();
    printf("rules:\n");
    test_rules();
    printf("budget:\n");
    test_budget();
    return check_done("test_json_strict");
}
