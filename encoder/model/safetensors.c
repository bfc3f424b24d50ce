/* safetensors.c — the safetensors reader (memory-mapped, validating every field a hostile file could get wrong)
 * and writer (deterministic bytes, streamed tensor data, atomic save), as declared in safetensors.h.
 *
 * Reader: st_open() maps the whole file read-only; only the header is parsed, so tensor pages are touched by
 * whoever reads a tensor's data (a 16 GB checkpoint costs its header plus the pages actually used). Errors about
 * the file's content are VITD_E_INVALID_ARG and name the file's base name and the tensor; open/map failures are
 * VITD_E_IO.
 * Writer: tensors are kept in insertion order; st_writer_add() copies data, st_writer_add_fill() records a
 * generator that is run chunk by chunk while saving. Output layout follows the official library.
 */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "json_strict.h"
#include "util.h"

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} dtype_info[ST_N_DTYPES] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2}, [ST_F64] = {"F64", 8},
    [ST_I64] = {"I64", 8},   [ST_I32] = {"I32", 4},         [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},     [ST_BOOL] = {"BOOL", 1},       [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_U16] = {"U16", 2},   [ST_U32] = {"U32", 4},         [ST_U64] = {"U64", 8},
    [ST_F8_E5M2] = {"F8_E5M2", 1},
};

size_t st_dtype_size(st_dtype t) {
    return (unsigned)t < ST_N_DTYPES ? dtype_info[t].size : 0;
}

const char *st_dtype_name(st_dtype t) {
    return (unsigned)t < ST_N_DTYPES ? dtype_info[t].name : "?";
}

int st_dtype_parse(const char *name, st_dtype *out) {
    for (int i = 0; i < ST_N_DTYPES; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (st_dtype)i;
            return 0;
        }
    }
    return -1;
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---- reader ---- */

struct st_file {
    void *map;          /* mmap'd file, or NULL for st_open_memory */
    size_t map_len;
    const uint8_t *buf; /* the whole safetensors image */
    size_t len;
    int n;
    st_tensor *tensors; /* header order */
    st_tensor **by_name; /* sorted by name, for st_find */
    int n_meta;
    char **meta_keys, **meta_values;
};

/* Largest integer a JSON double holds exactly; offsets and dims beyond it cannot be trusted. */
#define JSON_MAX_INT 9007199254740992.0

/* Reads a non-negative integral JSON number into *v; 0 on success, -1 if it is not one. */
static int json_uint(const cJSON *item, int64_t *v) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!(d >= 0 && d <= JSON_MAX_INT) || d != floor(d)) return -1;
    *v = (int64_t)d;
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(st_tensor *const *)a)->name, (*(st_tensor *const *)b)->name);
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->by_name);
    if (f->map) munmap(f->map, f->map_len);
    free(f);
}

/* Parses the "__metadata__" object (string values only, as the format says) into f. */
static vitd_status parse_metadata(st_file *f, const cJSON *meta, const char *what, vitd_err *err) {
    if (cJSON_IsNull(meta)) return VITD_OK;
    if (!cJSON_IsObject(meta)) return vitd_fail(err, VITD_E_INVALID_ARG, "%s: __metadata__ is not an object", what);
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = xcalloc((size_t)n + 1, sizeof(char *));
    f->meta_values = xcalloc((size_t)n + 1, sizeof(char *));
    for (const cJSON *e = meta->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->string)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%s: __metadata__ value of \"%.64s\" is not a string", what,
                             e->string ? e->string : "");
        f->meta_keys[f->n_meta] = xstrdup(e->string);
        f->meta_values[f->n_meta] = xstrdup(e->valuestring);
        f->n_meta++;
    }
    return VITD_OK;
}

/* Validates one tensor entry of the header against the data section [data, data + data_len) and fills t. */
static vitd_status parse_entry(const cJSON *e, const uint8_t *data, size_t data_len, st_tensor *t,
                               const char *what, vitd_err *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return vitd_fail(err, VITD_E_INVALID_ARG, "%s: entry \"%.64s\" is not an object", what, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" has no dtype string", what, name);
    if (st_dtype_parse(jd->valuestring, &t->dtype) != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" has unknown dtype \"%.16s\"", what, name,
                         jd->valuestring);
    if (!cJSON_IsArray(js))
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" has no shape array", what, name);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > ST_MAX_DIMS)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" has %d dims, limit %d", what, name, ndim,
                         ST_MAX_DIMS);
    t->ndim = ndim;
    /* numel x element size, exact or saturated at UINT64_MAX (a zero dim still gives 0) */
    uint64_t bytes = st_dtype_size(t->dtype);
    int i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        if (json_uint(d, &t->shape[i]) != 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" dim %d is not a non-negative integer",
                             what, name, i);
        if (__builtin_mul_overflow(bytes, (uint64_t)t->shape[i], &bytes)) bytes = UINT64_MAX;
    }
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" has no [begin, end] data_offsets", what,
                         name);
    int64_t begin, end;
    if (json_uint(jo->child, &begin) != 0 || json_uint(jo->child->next, &end) != 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" data_offsets are not non-negative integers",
                         what, name);
    if (begin > end)
        return vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" data_offsets begin %lld > end %lld", what,
                         name, (long long)begin, (long long)end);
    if ((uint64_t)end > (uint64_t)data_len)
        return vitd_fail(err, VITD_E_INVALID_ARG,
                         "%s: tensor \"%.64s\" data_offsets end %lld beyond the data section (%zu bytes)", what, name,
                         (long long)end, data_len);
    if ((uint64_t)(end - begin) != bytes)
        return vitd_fail(err, VITD_E_INVALID_ARG,
                         "%s: tensor \"%.64s\" holds %lld bytes, its shape and dtype %s need %s%llu", what, name,
                         (long long)(end - begin), st_dtype_name(t->dtype), bytes == UINT64_MAX ? "more than " : "",
                         (unsigned long long)bytes);
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    return VITD_OK;
}

/* Parses and validates the header of the image buf[0..len); what names the file in messages. On success *out
 * owns its tables (not buf). */
static vitd_status parse_image(const uint8_t *buf, size_t len, const char *what, st_file **out, vitd_err *err) {
    vitd_status st = VITD_OK;
    cJSON *root = NULL;
    st_file *f = xcalloc(1, sizeof *f);
    f->buf = buf;
    f->len = len;
    if (len < 8) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: %zu bytes, too short for a safetensors header", what, len);
        goto fail;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
    if (n > ST_MAX_HEADER) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: header length %llu exceeds the limit %u", what,
                       (unsigned long long)n, ST_MAX_HEADER);
        goto fail;
    }
    if (n > len - 8) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: header length %llu exceeds the file (%zu bytes)", what,
                       (unsigned long long)n, len);
        goto fail;
    }
    const char *hdr = (const char *)buf + 8;
    vitd_err jerr = {0};
    /* one value, then only whitespace (the writer's padding); a tensor named twice is refused */
    root = json_parse_strict(hdr, (size_t)n, NULL, NULL, &jerr);
    if (!root) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: header is not valid JSON: %s (%llu bytes)", what, jerr.msg, (unsigned long long)n);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: header is not a JSON object", what);
        goto fail;
    }
    const uint8_t *data = buf + 8 + n;
    size_t data_len = len - 8 - (size_t)n;
    int count = cJSON_GetArraySize(root);
    f->tensors = xcalloc((size_t)count + 1, sizeof(st_tensor));
    int seen_meta = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!e->string) { /* cJSON always names object members; guard anyway */
            st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: unnamed header entry", what);
            goto fail;
        }
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta++) {
                st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: __metadata__ appears twice", what);
                goto fail;
            }
            if ((st = parse_metadata(f, e, what, err)) != VITD_OK) goto fail;
            continue;
        }
        st_tensor *t = &f->tensors[f->n];
        if ((st = parse_entry(e, data, data_len, t, what, err)) != VITD_OK) goto fail;
        t->name = xstrdup(e->string);
        f->n++;
    }
    f->by_name = xcalloc((size_t)f->n + 1, sizeof(st_tensor *));
    for (int i = 0; i < f->n; i++) f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, (size_t)f->n, sizeof(st_tensor *), cmp_by_name);
    for (int i = 1; i < f->n; i++) {
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            st = vitd_fail(err, VITD_E_INVALID_ARG, "%s: tensor \"%.64s\" appears twice", what,
                           f->by_name[i]->name);
            goto fail;
        }
    }
    cJSON_Delete(root);
    *out = f;
    return VITD_OK;
fail:
    cJSON_Delete(root);
    st_close(f);
    return st;
}

vitd_status st_open_memory(const void *buf, size_t len, st_file **out, vitd_err *err) {
    *out = NULL;
    return parse_image(buf, len, "safetensors buffer", out, err);
}

vitd_status st_open(const char *path, st_file **out, vitd_err *err) {
    vitd_status st;
    void *map = NULL;
    size_t map_len = 0;
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return vitd_fail(err, VITD_E_IO, "cannot open %.200s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = vitd_fail(err, VITD_E_IO, "%.200s is not a readable regular file", path);
        goto fail;
    }
    if (sb.st_size < 8) {
        st = vitd_fail(err, VITD_E_INVALID_ARG, "%.200s: %lld bytes, too short for a safetensors header", base,
                       (long long)sb.st_size);
        goto fail;
    }
    map_len = (size_t)sb.st_size;
    map = mmap(NULL, map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        map = NULL;
        st = vitd_fail(err, VITD_E_IO, "cannot map %.200s (%zu bytes): %s", path, map_len, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    if ((st = parse_image(map, map_len, base, out, err)) != VITD_OK) goto fail;
    (*out)->map = map;
    (*out)->map_len = map_len;
    return VITD_OK;
fail:
    if (map) munmap(map, map_len);
    if (fd >= 0) close(fd);
    return st;
}

int st_count(const st_file *f) {
    return f->n;
}

const st_tensor *st_at(const st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->by_name[mid]->name);
        if (c == 0) return f->by_name[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

vitd_status st_to_f32(const st_tensor *t, float *out, vitd_err *err) {
    int64_t n = st_numel(t);
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32: memcpy(out, p, (size_t)n * 4); break;
    case ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
        break;
    case ST_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = f16_to_f32(h);
        }
        break;
    case ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        }
        break;
    default:
        return vitd_fail(err, VITD_E_UNSUPPORTED, "tensor %.160s: dtype %s is not a float type", t->name,
                         st_dtype_name(t->dtype));
    }
    return VITD_OK;
}

/* ---- writer ---- */

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    uint8_t *data;  /* owned copy, or NULL when fill or ref is set */
    const void *ref; /* the caller's bytes, not copied (st_writer_add_ref) */
    st_fill_fn fill;
    void *user;
} wtensor;

struct st_writer {
    int n, cap;
    wtensor *t;
    int n_meta, cap_meta;
    char **meta_keys, **meta_values;
};

st_writer *st_writer_create(void) {
    return xcalloc(1, sizeof(st_writer));
}

void st_writer_free(st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->t);
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

int st_writer_count(const st_writer *w) {
    return w->n;
}

size_t st_writer_data_bytes(const st_writer *w) {
    size_t s = 0;
    for (int i = 0; i < w->n; i++) s += w->t[i].nbytes;
    return s;
}

/* Checks name and shape, appends an entry with nbytes computed; the caller fills data or fill. */
static vitd_status writer_append(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                                 wtensor **out, vitd_err *err) {
    if ((unsigned)dtype >= ST_N_DTYPES)
        return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s: bad dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s: %d dims, limit %d", name, ndim, ST_MAX_DIMS);
    if (strcmp(name, "__metadata__") == 0)
        return vitd_fail(err, VITD_E_INVALID_ARG, "tensor name __metadata__ is reserved");
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s added twice", name);
    uint64_t bytes = st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s: dim %d is negative", name, i);
        if (shape[i] && bytes > (uint64_t)JSON_MAX_INT / (uint64_t)shape[i])
            return vitd_fail(err, VITD_E_TOO_LARGE, "tensor %.160s: shape too large", name);
        bytes *= (uint64_t)shape[i];
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        wtensor *nt = realloc(w->t, (size_t)w->cap * sizeof *nt);
        if (!nt) return vitd_fail(err, VITD_E_NOMEM, "tensor table of %d entries", w->cap);
        w->t = nt;
    }
    wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = (size_t)bytes;
    *out = t;
    return VITD_OK;
}

vitd_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                          const void *data, vitd_err *err) {
    wtensor *t;
    vitd_status st = writer_append(w, name, dtype, ndim, shape, &t, err);
    if (st != VITD_OK) return st;
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->data) return vitd_fail(err, VITD_E_NOMEM, "tensor %.160s: %zu bytes", name, t->nbytes);
    if (t->nbytes) memcpy(t->data, data, t->nbytes);
    t->name = xstrdup(name);
    w->n++;
    return VITD_OK;
}

vitd_status st_writer_add_ref(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                              const void *data, vitd_err *err) {
    wtensor *t;
    vitd_status st = writer_append(w, name, dtype, ndim, shape, &t, err);
    if (st != VITD_OK) return st;
    t->ref = data;
    t->name = xstrdup(name);
    w->n++;
    return VITD_OK;
}

/* Converts n floats to dtype (F32, F16, BF16) into dst. */
static void convert_f32(const float *src, int64_t n, st_dtype dtype, uint8_t *dst) {
    if (dtype == ST_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (dtype == ST_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(dst + 2 * i, &h, 2);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = f32_to_f16(src[i]);
            memcpy(dst + 2 * i, &h, 2);
        }
    }
}

vitd_status st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                              const float *data, vitd_err *err) {
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s: cannot convert float32 to %s", name,
                         st_dtype_name(dtype));
    wtensor *t;
    vitd_status st = writer_append(w, name, dtype, ndim, shape, &t, err);
    if (st != VITD_OK) return st;
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->data) return vitd_fail(err, VITD_E_NOMEM, "tensor %.160s: %zu bytes", name, t->nbytes);
    convert_f32(data, (int64_t)(t->nbytes / st_dtype_size(dtype)), dtype, t->data);
    t->name = xstrdup(name);
    w->n++;
    return VITD_OK;
}

vitd_status st_writer_add_fill(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                               st_fill_fn fill, void *user, vitd_err *err) {
    if (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16)
        return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s: cannot generate %s", name, st_dtype_name(dtype));
    wtensor *t;
    vitd_status st = writer_append(w, name, dtype, ndim, shape, &t, err);
    if (st != VITD_OK) return st;
    t->fill = fill;
    t->user = user;
    t->name = xstrdup(name);
    w->n++;
    return VITD_OK;
}

vitd_status st_writer_set_metadata(st_writer *w, const char *key, const char *value, vitd_err *err) {
    (void)err;
    for (int i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_values[i]);
            w->meta_values[i] = xstrdup(value);
            return VITD_OK;
        }
    }
    if (w->n_meta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k = realloc(w->meta_keys, (size_t)w->cap_meta * sizeof *k);
        if (k) w->meta_keys = k;
        char **v = realloc(w->meta_values, (size_t)w->cap_meta * sizeof *v);
        if (v) w->meta_values = v;
        if (!k || !v) return vitd_fail(err, VITD_E_NOMEM, "metadata table of %d entries", w->cap_meta);
    }
    w->meta_keys[w->n_meta] = xstrdup(key);
    w->meta_values[w->n_meta] = xstrdup(value);
    w->n_meta++;
    return VITD_OK;
}

/* Builds the padded header: the returned buffer starts with the 8-byte length; *total is 8 + header length,
 * a multiple of 8. The caller frees. */
static uint8_t *build_header(const st_writer *w, size_t *total) {
    strbuf b = {0};
    char num[64];
    strbuf_append(&b, "\0\0\0\0\0\0\0\0", 8);
    strbuf_puts(&b, "{");
    int first = 1;
    if (w->n_meta) {
        strbuf_puts(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) strbuf_puts(&b, ",");
            strbuf_json_string(&b, w->meta_keys[i]);
            strbuf_puts(&b, ":");
            strbuf_json_string(&b, w->meta_values[i]);
        }
        strbuf_puts(&b, "}");
        first = 0;
    }
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        if (!first) strbuf_puts(&b, ",");
        first = 0;
        strbuf_json_string(&b, t->name);
        strbuf_puts(&b, ":{\"dtype\":");
        strbuf_json_string(&b, st_dtype_name(t->dtype));
        strbuf_puts(&b, ",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            strbuf_puts(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + t->nbytes);
        strbuf_puts(&b, num);
        off += t->nbytes;
    }
    strbuf_puts(&b, "}");
    while (b.len % 8) strbuf_puts(&b, " ");
    char *text = strbuf_finish(&b);
    VITD_ASSERT(text);  /* header size is bounded by names the caller chose, not by input */
    uint64_t n = b.len - 8;
    for (int i = 0; i < 8; i++) text[i] = (char)(n >> (8 * i));
    *total = b.len;
    return (uint8_t *)text;
}

/* Where serialised bytes go: a file descriptor or a memory buffer. */
typedef struct {
    int fd;
    uint8_t *mem;
    size_t pos;
    const char *what;
} sink;

static vitd_status sink_write(sink *s, const void *p, size_t n, vitd_err *err) {
    if (s->mem) {
        memcpy(s->mem + s->pos, p, n);
        s->pos += n;
        return VITD_OK;
    }
    const uint8_t *c = p;
    while (n) {
        ssize_t k = write(s->fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return vitd_fail(err, VITD_E_IO, "writing %.200s: %s", s->what, strerror(k < 0 ? errno : EIO));
        c += k;
        n -= (size_t)k;
        s->pos += (size_t)k;
    }
    return VITD_OK;
}

/* Serialises the whole file into s: header, then each tensor's bytes (copied or generated chunk by chunk). */
static vitd_status write_all(const st_writer *w, sink *s, vitd_err *err) {
    vitd_status st = VITD_OK;
    size_t hlen;
    uint8_t *hdr = build_header(w, &hlen);
    float *chunk = NULL;
    uint8_t *conv = NULL;
    if ((st = sink_write(s, hdr, hlen, err)) != VITD_OK) goto fail;
    for (int i = 0; i < w->n; i++) {
        const wtensor *t = &w->t[i];
        if (!t->fill) {
            if ((st = sink_write(s, t->ref ? t->ref : t->data, t->nbytes, err)) != VITD_OK) goto fail;
            continue;
        }
        if (!chunk) {
            chunk = malloc((size_t)ST_FILL_CHUNK * sizeof(float));
            conv = malloc((size_t)ST_FILL_CHUNK * sizeof(float));
            if (!chunk || !conv) {
                st = vitd_fail(err, VITD_E_NOMEM, "safetensors writer chunk buffers");
                goto fail;
            }
        }
        size_t esize = st_dtype_size(t->dtype);
        int64_t numel = (int64_t)(t->nbytes / esize);
        for (int64_t first = 0; first < numel; first += ST_FILL_CHUNK) {
            int64_t cnt = numel - first < ST_FILL_CHUNK ? numel - first : ST_FILL_CHUNK;
            if ((st = t->fill(t->user, first, cnt, chunk, err)) != VITD_OK) goto fail;
            convert_f32(chunk, cnt, t->dtype, conv);
            if ((st = sink_write(s, conv, (size_t)cnt * esize, err)) != VITD_OK) goto fail;
        }
    }
fail:
    free(conv);
    free(chunk);
    free(hdr);
    return st;
}

vitd_status st_writer_to_segments(const st_writer *w, uint8_t **header, size_t *header_len, st_segment *seg,
                                  vitd_err *err) {
    for (int i = 0; i < w->n; i++)
        if (w->t[i].fill)
            return vitd_fail(err, VITD_E_INVALID_ARG, "tensor %.160s is generated while saving: no segment to hand out",
                             w->t[i].name);
    *header = build_header(w, header_len);
    for (int i = 0; i < w->n; i++)
        seg[i] = (st_segment){w->t[i].ref ? w->t[i].ref : w->t[i].data, w->t[i].nbytes};
    return VITD_OK;
}

vitd_status st_writer_to_memory(const st_writer *w, uint8_t **buf, size_t *len, vitd_err *err) {
    size_t hlen;
    uint8_t *hdr = build_header(w, &hlen);
    free(hdr);
    size_t total = hlen + st_writer_data_bytes(w);
    *buf = NULL;
    *len = 0;
    sink s = {.fd = -1, .mem = malloc(total), .what = "memory"};
    if (!s.mem) return vitd_fail(err, VITD_E_NOMEM, "safetensors image of %zu bytes", total);
    vitd_status st = write_all(w, &s, err);
    if (st != VITD_OK) {
        free(s.mem);
        return st;
    }
    VITD_ASSERT(s.pos == total);
    *buf = s.mem;
    *len = total;
    return VITD_OK;
}

vitd_status st_writer_save(const st_writer *w, const char *path, vitd_err *err) {
    vitd_status st;
    size_t plen = strlen(path);
    char *tmp = xmalloc(plen + 16);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = vitd_fail(err, VITD_E_IO, "cannot create a temporary file beside %.200s: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    sink s = {.fd = fd, .what = path};
    if ((st = write_all(w, &s, err)) != VITD_OK) goto fail;
    if (fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
        st = vitd_fail(err, VITD_E_IO, "syncing %.200s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        st = vitd_fail(err, VITD_E_IO, "closing %.200s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        st = vitd_fail(err, VITD_E_IO, "renaming %.120s to %.120s: %s", tmp, path, strerror(errno));
        goto fail;
    }
    /* make the rename itself durable */
    char *dir = xstrdup(path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    free(tmp);
    return VITD_OK;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return st;
}
