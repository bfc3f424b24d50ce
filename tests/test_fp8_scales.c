/* labels: unit */
/* test_fp8_scales.c — static FP8 scale files (both forms, key spellings, every error), the atomic save and its
 * round trip, and the amax history ring (max over the last N steps, the one-time wrap signal, independence of two
 * engines' histories). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fp8_scales.h"
#include "util.h"

static void expect_error(const char *json, int n_layers, const char *needle) {
    fp8_qkv s[4];
    vitd_err err = {0};
    vitd_status st = fp8_scales_parse(json, n_layers, s, &err);
    CHECK_MSG(st == VITD_E_INVALID_ARG, "expected an error for %s", json);
    CHECK_STR_CONTAINS(err.msg, needle);
}

int main(void) {
    vitd_err err = {0};
    fp8_qkv s[4];

    /* Form 1: layer -> {q, k, v}. */
    CHECK_OK(fp8_scales_parse("{\"blocks.0.attn\": {\"q\": 0.5, \"k\": 0.25, \"v\": 2},"
                              " \"blocks.1.attn\": {\"q\": 1e-3, \"k\": 3, \"v\": 4}}", 2, s, &err), &err);
    CHECK(s[0].q == 0.5f && s[0].k == 0.25f && s[0].v == 2.0f && s[1].q == 1e-3f && s[1].v == 4.0f);
    /* Form 2: {"layers": ...} with *_scale keys and prefixes; extra top-level keys are ignored. */
    CHECK_OK(fp8_scales_parse("{\"margin\": 1.5, \"layers\": {\"model.visual.blocks.1.attn\": {\"q_scale\": 7,"
                              " \"k_scale\": 8, \"v_scale\": 9}, \"0\": {\"q\": 1, \"k_scale\": 2, \"v\": 3}}}",
                              2, s, &err), &err);
    CHECK(s[0].q == 1 && s[0].k == 2 && s[0].v == 3 && s[1].q == 7 && s[1].k == 8 && s[1].v == 9);
    CHECK_OK(fp8_scales_parse("{\"visual.blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 1, s, &err), &err);

    /* Every error names the layer or key. */
    expect_error("[1, 2]", 1, "not a JSON object");
    expect_error("{", 1, "parse error");
    expect_error("{\"layers\": [1]}", 1, "\"layers\" must be an object");
    expect_error("{\"blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 2, "blocks.1.attn is missing");
    expect_error("{\"blocks.0.attn\": {\"q\": 1, \"k\": 1}}", 1, "has no v");
    expect_error("{\"blocks.0.attn\": {\"q\": 0, \"k\": 1, \"v\": 1}}", 1, "q must be a positive number");
    expect_error("{\"blocks.0.attn\": {\"q\": 1, \"k\": -2, \"v\": 1}}", 1, "blocks.0.attn: k must be");
    expect_error("{\"blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": \"x\"}}", 1, "v must be a positive number");
    expect_error("{\"blocks.0.attn\": {\"q\": 1e-300, \"k\": 1, \"v\": 1}}", 1, "q must be a positive number");
    expect_error("{\"blocks.0.attn\": {\"q\": 1, \"q_scale\": 1, \"k\": 1, \"v\": 1}}", 1, "both q and q_scale");
    expect_error("{\"blocks.5.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 2, "unknown layer \"blocks.5.attn\"");
    expect_error("{\"blocks.0.mlp\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 2, "unknown layer \"blocks.0.mlp\"");
    expect_error("{\"blocks.00.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 1, "unknown layer");
    expect_error("{\"blocks.0.attn\": 3}", 1, "must be an object");
    expect_error("{\"0\": {\"q\": 1, \"k\": 1, \"v\": 1}, \"blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 1,
                 "given twice");

    /* The linear layers' entries (issue 14): skipped by the attention parser, read by the linear one, all or none. */
    {
        fp8_lin l[2];
        int found = -1;
        const char *both = "{\"layers\": {\"blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}, \"blocks.0.linear\": "
                           "{\"qkv\": 0.5, \"fc1\": 0.25, \"fc2_scale\": 4}}}";
        CHECK_OK(fp8_scales_parse(both, 1, s, &err), &err);
        CHECK_OK(fp8_scales_parse_linear(both, 1, l, &found, &err), &err);
        CHECK(found == 1 && l[0].qkv == 0.5f && l[0].fc1 == 0.25f && l[0].fc2 == 4.0f);
        CHECK_OK(fp8_scales_parse_linear("{\"blocks.0.attn\": {\"q\": 1, \"k\": 1, \"v\": 1}}", 1, l, &found, &err),
                 &err);
        CHECK_EQ_INT(0, found);
        const char *partial = "{\"blocks.0.linear\": {\"qkv\": 1, \"fc1\": 1, \"fc2\": 1}}";
        CHECK(fp8_scales_parse_linear(partial, 2, l, &found, &err) == VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "blocks.1.linear is missing");
        CHECK(fp8_scales_parse_linear("{\"blocks.0.linear\": {\"qkv\": 1, \"fc1\": 0, \"fc2\": 1}}", 1, l, &found,
                                      &err) == VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "blocks.0.linear: fc1 must be a positive number");
        CHECK(fp8_scales_parse_linear("{\"blocks.0.linear\": {\"qkv\": 1, \"fc1\": 1}}", 1, l, &found, &err) ==
              VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "has no fc2");
        CHECK(fp8_scales_parse_linear("{\"blocks.0.linear\": 2}", 1, l, &found, &err) == VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "{qkv, fc1, fc2}");
        CHECK(fp8_scales_parse_linear("{\"blocks.3.linear\": {\"qkv\": 1, \"fc1\": 1, \"fc2\": 1}}", 2, l, &found,
                                      &err) == VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "unknown layer \"blocks.3.linear\"");
        CHECK(fp8_scales_parse_linear("{\"layers\": 7}", 1, l, &found, &err) == VITD_E_INVALID_ARG);
        CHECK_STR_CONTAINS(err.msg, "\"layers\" must be an object");
    }

    /* Save (margin applied) -> load round trip; the write is atomic and leaves no temporary file. */
    char dir[] = "/tmp/vitd_test_fp8_XXXXXX";
    VITD_ASSERT(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/scales.json", dir);
    fp8_qkv in[3] = {{0.01f, 0.02f, 0.03f}, {1.0f, 2.0f, 3.0f}, {5e-4f, 6e-4f, 7e-4f}}, back[3];
    CHECK_OK(fp8_scales_save(path, in, 3, 1.5, "test", &err), &err);
    CHECK_OK(fp8_scales_load(path, 3, back, &err), &err);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(fabsf(back[i].q - 1.5f * in[i].q) <= 1e-6f * in[i].q && fabsf(back[i].v - 1.5f * in[i].v) <=
                  1e-6f * in[i].v, "layer %d round trip", i);
    CHECK_OK(fp8_scales_save(path, in, 3, 1.0, NULL, &err), &err);  /* overwrite in place */
    CHECK_OK(fp8_scales_load(path, 3, back, &err), &err);
    CHECK(back[1].k == 2.0f);
    int entries = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) entries += e->d_name[0] != '.';
    if (d) closedir(d);
    CHECK_EQ_INT(1, entries);
    {   /* with the linear entries: both parsers read their part back, times the margin */
        fp8_lin lin[3] = {{0.1f, 0.2f, 0.3f}, {1, 2, 3}, {4, 5, 6}}, lb[3];
        int found = 0;
        CHECK_OK(fp8_scales_save_all(path, in, lin, 3, 2.0, "test", &err), &err);
        CHECK_OK(fp8_scales_load(path, 3, back, &err), &err);
        CHECK_OK(fp8_scales_load_linear(path, 3, lb, &found, &err), &err);
        CHECK(found == 1 && back[2].v == 2.0f * in[2].v && lb[0].qkv == 0.2f && lb[2].fc2 == 12.0f);
        CHECK_OK(fp8_scales_save(path, in, 3, 1.0, NULL, &err), &err);
    }
    CHECK(fp8_scales_save(path, in, 3, 0.0, NULL, &err) == VITD_E_INVALID_ARG);
    CHECK(fp8_scales_load("/nonexistent/scales.json", 3, back, &err) == VITD_E_IO);
    CHECK_STR_CONTAINS(err.msg, "/nonexistent/scales.json");
    CHECK(fp8_scales_load(path, 4, back, &err) == VITD_E_INVALID_ARG);  /* the file has 3 layers */
    CHECK_STR_CONTAINS(err.msg, "blocks.3.attn is missing");
    CHECK_STR_CONTAINS(err.msg, path);

    /* History ring: scale = max over the last N amax values / 448; wraps once. */
    fp8_history h, h2;
    CHECK_OK(fp8_history_init(&h, 2, 4, &err), &err);
    CHECK_OK(fp8_history_init(&h2, 2, 4, &err), &err);
    fp8_qkv sc;
    CHECK_EQ_INT(0, fp8_history_scales(&h, 0, &sc));
    const float amax_seq[7] = {10, 3, 5, 2, 1, 1, 1};
    int wraps = 0;
    for (int step = 0; step < 7; step++) {
        float a[3] = {amax_seq[step], 2 * amax_seq[step], 0.5f * amax_seq[step]};
        fp8_history_push(&h, 0, a);
        wraps += fp8_history_just_wrapped(&h, 0);
        CHECK_EQ_INT(1, fp8_history_scales(&h, 0, &sc));
        float want = 0;
        for (int j = step; j >= 0 && j > step - 4; j--) want = fmaxf(want, amax_seq[j]);
        CHECK_MSG(sc.q == want / 448.0f && sc.k == 2 * want / 448.0f && sc.v == 0.5f * want / 448.0f,
                  "step %d: q %g want %g", step, sc.q, want / 448.0f);
    }
    CHECK_EQ_INT(1, wraps);
    CHECK_EQ_INT(0, fp8_history_scales(&h, 1, &sc));    /* layer 1 untouched */
    CHECK_EQ_INT(0, fp8_history_scales(&h2, 0, &sc));   /* a second engine's history is independent */
    float zero[3] = {0, 0, 0};
    fp8_history_push(&h2, 0, zero);
    CHECK(fp8_history_scales(&h2, 0, &sc) && sc.q > 0);  /* never a zero scale */
    fp8_history_release(&h);
    fp8_history_release(&h2);
    fp8_history bad;
    CHECK(fp8_history_init(&bad, 0, 4, &err) == VITD_E_INVALID_ARG);

    if (check_rm_tree(dir) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_done("test_fp8_scales");
}
