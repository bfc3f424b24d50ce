/* vllm.c — vLLM `image_embeds` content parts (vllm.h): options, and the answer whose "content" array a frontend
 * splices into its chat request. Each part's tensor is laid out as a torch.save archive, filled in place with the
 * image's rows (handover_write), sealed, then base64-encoded straight into the answer text. */
#include "vllm.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "body.h"
#include "content_id.h"
#include "handover.h"
#include "torch_archive.h"
#include "util.h"

void vllm_options_init(vllm_options *o, arena *a, int max_images) {
    *o = (vllm_options){.grid = VLLM_GRID_AUTO, .transfer = VLLM_INLINE, .max_uuids = max_images, .a = a};
}

static vitd_status add_uuid(vllm_options *o, const char *v, vitd_err *err) {
    if (!v) return vitd_fail(err, VITD_E_INVALID_ARG, "uuid %d: must be a string", o->n_uuids);
    vitd_err e = {0};
    if (!content_id_uuid_ok(v, strlen(v), &e))
        return vitd_fail(err, VITD_E_INVALID_ARG, "uuid %d: %s", o->n_uuids, e.msg + (sizeof "uuid: " - 1));
    if (o->max_uuids > 0 && o->n_uuids >= o->max_uuids)
        return vitd_fail(err, VITD_E_TOO_LARGE, "more than max_images %d uuids", o->max_uuids);
    if (o->n_uuids == o->cap_uuids) {
        int nc = o->cap_uuids ? 2 * o->cap_uuids : 8;
        char **nu = arena_realloc(o->a, o->uuids, (size_t)o->cap_uuids * sizeof *nu, (size_t)nc * sizeof *nu);
        if (!nu) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for uuids");
        o->uuids = nu;
        o->cap_uuids = nc;
    }
    char *copy = arena_strdup(o->a, v);
    if (!copy) return vitd_fail(err, VITD_E_NOMEM, "out of request memory for uuids");
    o->uuids[o->n_uuids++] = copy;
    return VITD_OK;
}

int vllm_apply_option(void *user, const char *key, const char *value, vitd_err *err) {
    vllm_options *o = user;
    bool mine = !strcmp(key, "uuid") || !strcmp(key, "uuids") || !strcmp(key, "grid_layout") ||
                !strcmp(key, "transfer");
    if (!mine) return 1;
    if (value == body_value_too_long)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: a value longer than 256 bytes", key);
    if (!strcmp(key, "uuid") || !strcmp(key, "uuids")) {
        vitd_status s = add_uuid(o, value, err);
        return s ? (int)s : 0;
    }
    const char *v = value ? value : "";
    if (!strcmp(key, "grid_layout")) {
        if (!strcasecmp(v, "auto")) o->grid = VLLM_GRID_AUTO;
        else if (!strcasecmp(v, "2d")) o->grid = VLLM_GRID_2D;
        else if (!strcasecmp(v, "1d")) o->grid = VLLM_GRID_1D;
        else return vitd_fail(err, VITD_E_INVALID_ARG, "grid_layout: \"%.40s\" is not one of auto, 2d, 1d", v);
        return 0;
    }
    if (!strcmp(key, "transfer")) {
        if (!strcasecmp(v, "inline")) o->transfer = VLLM_INLINE;
        else if (!strcasecmp(v, "ec_cache")) o->transfer = VLLM_EC_CACHE;
        else return vitd_fail(err, VITD_E_INVALID_ARG, "transfer: \"%.40s\" is not one of inline, ec_cache", v);
        return 0;
    }
    return 1;
}

bool vllm_grid_2d(const vllm_options *o, int n_images) {
    if (o->grid == VLLM_GRID_2D) return true;
    if (o->grid == VLLM_GRID_1D) return false;
    return n_images == 1;
}

/* Appends the base64 of buf[0..n) to b, in place. */
static void put_b64(strbuf *b, const uint8_t *buf, size_t n) {
    char *w = strbuf_reserve(b, 4 * ((n + 2) / 3));
    if (w) strbuf_commit(b, body_base64_encode(buf, n, w));
}

char *vllm_grid_b64(const vitd_grid *g, bool two_d, vitd_err *err) {
    int64_t thw[3] = {g->t, g->h, g->w}, shape2[2] = {1, 3}, shape1[1] = {3};
    uint8_t *ar = NULL;
    size_t n = 0;
    if (torch_archive_of(ST_I64, two_d ? 2 : 1, two_d ? shape2 : shape1, thw, &ar, &n, err)) return NULL;
    strbuf b = {0};
    put_b64(&b, ar, n);
    free(ar);
    char *s = strbuf_finish(&b);
    if (!s) vitd_fail(err, VITD_E_NOMEM, "out of memory for a grid archive");
    return s;
}

static const char *dtype_word(st_dtype d) {
    return d == ST_BF16 ? "bfloat16" : d == ST_F16 ? "float16" : "float32";
}

/* The image_embeds archive of one image: [rows, D*(1+k)] in dtype, base64 into b. *bytes gets the archive size. */
static vitd_status put_embeds(strbuf *b, const handover_src *s, st_dtype dtype, size_t *bytes, vitd_err *err) {
    int64_t shape[2] = {s->rows, (int64_t)s->D * (1 + s->k)};
    torch_archive ta;
    vitd_status st = torch_archive_begin(&ta, dtype, 2, shape, err);
    if (st) return st;
    VITD_ASSERT(ta.data_len == handover_bytes(s, 0, 1 + s->k, dtype));
    st = handover_write(s, 0, 1 + s->k, dtype, torch_archive_data(&ta), err);
    if (st == VITD_OK) {
        torch_archive_seal(&ta);
        put_b64(b, ta.buf, ta.len);
        *bytes = ta.len;
    }
    free(ta.buf);
    return st;
}

char *vllm_render(const reply_encode *re, const vllm_options *o, char *const *uuids, const bool *derived,
                  int merge, size_t *len, vitd_err *err) {
    strbuf b = {0};
    bool two_d = vllm_grid_2d(o, re->n_images), inline_ = o->transfer == VLLM_INLINE;
    long long patches = 0, tokens = 0;
    size_t *bytes = calloc((size_t)re->n_images + 1, sizeof *bytes);
    if (!bytes) {
        vitd_fail(err, VITD_E_NOMEM, "out of memory rendering the answer");
        return NULL;
    }
    strbuf_puts(&b, "{\"id\":");
    strbuf_json_string(&b, re->id ? re->id : "");
    strbuf_puts(&b, ",\"object\":\"vllm.image_embeds\",\"model\":");
    strbuf_json_string(&b, re->model ? re->model : "");
    strbuf_printf(&b, ",\"dtype\":\"%s\",\"transfer\":\"%s\",\"grid_layout\":\"%s\",\"content\":[",
                  dtype_word(re->opts.dtype), inline_ ? "inline" : "ec_cache", two_d ? "2d" : "1d");
    vitd_status st = VITD_OK;
    for (int i = 0; i < re->n_images && st == VITD_OK; i++) {
        handover_src s;
        if ((st = handover_src_of(re, i, merge, &s, err))) break;
        if (s.k != re->n_deepstack) {
            st = vitd_fail(err, VITD_E_INTERNAL, "image %d: DeepStack features missing from the hand-over", i);
            break;
        }
        patches += (long long)re->images[i].grid.t * re->images[i].grid.h * re->images[i].grid.w;
        tokens += s.rows;
        strbuf_puts(&b, i ? ",{" : "{");
        strbuf_puts(&b, "\"type\":\"image_embeds\",\"image_embeds\":{");
        if (inline_) {
            strbuf_puts(&b, "\"image_embeds\":\"");
            if ((st = put_embeds(&b, &s, re->opts.dtype, &bytes[i], err))) break;
            strbuf_puts(&b, "\",");
        }
        char *grid = vllm_grid_b64(&re->images[i].grid, two_d, err);
        if (!grid) {
            st = err->code;
            break;
        }
        strbuf_puts(&b, "\"image_grid_thw\":\"");
        strbuf_puts(&b, grid);
        free(grid);
        strbuf_puts(&b, "\"},\"uuid\":");
        strbuf_json_string(&b, uuids[i]);
        strbuf_puts(&b, "}");
    }
    if (st == VITD_OK) {
        strbuf_puts(&b, "],\"data\":[");
        for (int i = 0; i < re->n_images; i++) {
            const vitd_grid *g = &re->images[i].grid;
            int64_t rows = (int64_t)g->t * g->h * g->w / ((int64_t)merge * merge);
            strbuf_printf(&b, "%s{\"index\":%d,\"uuid\":", i ? "," : "", i);
            strbuf_json_string(&b, uuids[i]);
            strbuf_printf(&b, ",\"uuid_source\":\"%s\",\"grid_thw\":[%d,%d,%d],\"shape\":[%lld,%d]",
                          derived && derived[i] ? "derived" : "client", g->t, g->h, g->w, (long long)rows,
                          re->out_hidden * (1 + re->n_deepstack));
            if (inline_) strbuf_printf(&b, ",\"archive_bytes\":%zu", bytes[i]);
            strbuf_puts(&b, "}");
        }
        strbuf_printf(&b, "],\"usage\":{\"images\":%d,\"patches\":%lld,\"tokens\":%lld}}\n", re->n_images, patches,
                      tokens);
    }
    free(bytes);
    if (st != VITD_OK) {
        free(strbuf_finish(&b));
        return NULL;
    }
    char *text = strbuf_finish(&b);
    if (!text) {
        vitd_fail(err, VITD_E_NOMEM, "out of memory rendering the answer");
        return NULL;
    }
    *len = b.len;
    return text;
}
