/* labels: unit */
/* test_safetensors.c — the safetensors reader and writer: round trips of every dtype (memory and file), metadata,
 * streamed (fill) tensors, exact float conversions, atomic save, deterministic bytes, every malformed-header case
 * as an error with a message, and a fuzz of byte flips and truncations that must never crash or hand out a
 * pointer outside the buffer. */
#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "safetensors.h"
#include "util.h"

/* ---- helpers ---- */

static char g_dir[64];

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Builds a safetensors image from a header text and data_len bytes of data (0x5a). Caller frees. */
static uint8_t *make_image(const char *hdr, size_t data_len, size_t *len) {
    size_t n = strlen(hdr);
    *len = 8 + n + data_len;
    uint8_t *b = malloc(*len);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(b + 8, hdr, n);
    memset(b + 8 + n, 0x5a, data_len);
    return b;
}

/* Reference IEEE half -> float written independently of util.h. */
static float ref_f16(uint16_t h) {
    int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return (float)(sign ? -v : v);
}

static int same_bits(float a, float b) {
    return memcmp(&a, &b, 4) == 0 || (isnan(a) && isnan(b));
}

/* ---- round trip ---- */

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[3];
} spec;

static const spec SPECS[] = {
    {"f32.matrix", ST_F32, 2, {3, 5}},         {"f16", ST_F16, 1, {7}},
    {"bf16.cube", ST_BF16, 3, {2, 3, 4}},      {"f64", ST_F64, 1, {3}},
    {"i64", ST_I64, 1, {2}},                   {"i32", ST_I32, 2, {1, 3}},
    {"i16", ST_I16, 1, {5}},                   {"i8", ST_I8, 1, {9}},
    {"u8", ST_U8, 1, {11}},                    {"bool", ST_BOOL, 1, {4}},
    {"f8", ST_F8_E4M3, 1, {6}},                {"u16", ST_U16, 1, {3}},
    {"u32", ST_U32, 1, {2}},                   {"u64", ST_U64, 1, {1}},
    {"f8e5m2", ST_F8_E5M2, 1, {5}},            {"scalar", ST_F32, 0, {0}},
    {"empty", ST_F32, 2, {0, 7}},              {"odd \"name\" \\ \x01 ü", ST_U8, 1, {2}},
};
#define N_SPECS ((int)(sizeof SPECS / sizeof SPECS[0]))

static size_t spec_bytes(const spec *s) {
    size_t n = st_dtype_size(s->dtype);
    for (int i = 0; i < s->ndim; i++) n *= (size_t)s->shape[i];
    return n;
}

static void spec_data(int k, uint8_t *buf, size_t n) {
    unsigned long long rng = 1000 + (unsigned long long)k;
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)check_rng_next(&rng);
}

static void check_contents(const st_file *f, const char *what) {
    CHECK_EQ_INT(N_SPECS, st_count(f));
    for (int k = 0; k < N_SPECS && k < st_count(f); k++) {
        const st_tensor *t = st_at(f, k);
        const spec *s = &SPECS[k];
        CHECK_MSG(strcmp(t->name, s->name) == 0, "%s: tensor %d is \"%s\", expected \"%s\"", what, k, t->name,
                  s->name);
        CHECK_EQ_INT(s->dtype, t->dtype);
        CHECK_EQ_INT(s->ndim, t->ndim);
        for (int i = 0; i < s->ndim; i++) CHECK_EQ_INT(s->shape[i], t->shape[i]);
        CHECK_EQ_INT(spec_bytes(s), t->nbytes);
        uint8_t want[256];
        spec_data(k, want, spec_bytes(s));
        CHECK_MSG(memcmp(want, t->data, t->nbytes) == 0, "%s: data of %s", what, s->name);
        CHECK(st_find(f, s->name) == t);
    }
    CHECK(st_find(f, "absent") == NULL);
    CHECK(st_at(f, -1) == NULL && st_at(f, N_SPECS) == NULL);
    CHECK_STR_CONTAINS(st_metadata(f, "format"), "pt");
    CHECK_STR_CONTAINS(st_metadata(f, "note"), "second \"value\"");
    CHECK(st_metadata(f, "missing") == NULL);
}

static st_writer *spec_writer(void) {
    vitd_err err = {0};
    st_writer *w = st_writer_create();
    CHECK_OK(st_writer_set_metadata(w, "format", "pt", &err), &err);
    CHECK_OK(st_writer_set_metadata(w, "note", "first", &err), &err);
    for (int k = 0; k < N_SPECS; k++) {
        uint8_t buf[256];
        spec_data(k, buf, spec_bytes(&SPECS[k]));
        CHECK_OK(st_writer_add(w, SPECS[k].name, SPECS[k].dtype, SPECS[k].ndim, SPECS[k].shape, buf, &err), &err);
    }
    CHECK_OK(st_writer_set_metadata(w, "note", "second \"value\"", &err), &err); /* replaces, keeps position */
    return w;
}

static void test_round_trip(void) {
    vitd_err err = {0};
    st_writer *w = spec_writer();
    CHECK_EQ_INT(N_SPECS, st_writer_count(w));
    uint8_t *mem;
    size_t len;
    CHECK_OK(st_writer_to_memory(w, &mem, &len, &err), &err);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | mem[i];
    CHECK_EQ_INT(0, (8 + n) % 8);                   /* data starts 8-byte aligned */
    CHECK_EQ_INT(len, 8 + n + st_writer_data_bytes(w));
    size_t last = 8 + n - 1;
    while (mem[last] == ' ') last--;                /* padding is spaces after the closing brace */
    CHECK(mem[8] == '{' && mem[last] == '}' && 8 + n - 1 - last < 8);
    CHECK(memcmp(mem + 8, "{\"__metadata__\":{\"format\":\"pt\",\"note\":", 38) == 0);

    st_file *f;
    CHECK_OK(st_open_memory(mem, len, &f, &err), &err);
    if (f) {
        check_contents(f, "memory");
        CHECK(((uintptr_t)st_at(f, 0)->data - (uintptr_t)mem) % 8 == 0);
        st_close(f);
    }

    char path[128];
    snprintf(path, sizeof path, "%s/rt.safetensors", g_dir);
    CHECK_OK(st_writer_save(w, path, &err), &err);
    size_t flen;
    uint8_t *file = check_read_file(path, &flen);
    CHECK(file && flen == len && memcmp(file, mem, len) == 0); /* save and to_memory give the same bytes */
    free(file);
    CHECK_OK(st_open(path, &f, &err), &err);
    if (f) {
        check_contents(f, "file");
        st_close(f);
    }
    CHECK_EQ_INT(1, count_files(g_dir)); /* no temporary file left behind */

    /* same content, same bytes; the second writer is built from scratch */
    st_writer *w2 = spec_writer();
    uint8_t *mem2;
    size_t len2;
    CHECK_OK(st_writer_to_memory(w2, &mem2, &len2, &err), &err);
    CHECK(len2 == len && memcmp(mem, mem2, len) == 0);
    free(mem2);
    st_writer_free(w2);

    /* saving over an existing file replaces it atomically; a missing directory fails cleanly */
    st_writer *w3 = st_writer_create();
    int64_t one = 1;
    float x = 3.5f;
    CHECK_OK(st_writer_add_f32(w3, "x", ST_F32, 1, &one, &x, &err), &err);
    CHECK_OK(st_writer_save(w3, path, &err), &err);
    CHECK_OK(st_open(path, &f, &err), &err);
    if (f) {
        CHECK_EQ_INT(1, st_count(f));
        CHECK(st_metadata(f, "format") == NULL);
        st_close(f);
    }
    char bad[160];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", g_dir);
    CHECK_EQ_INT(VITD_E_IO, st_writer_save(w3, bad, &err));
    CHECK_STR_CONTAINS(err.msg, "no/such/dir");
    CHECK_EQ_INT(1, count_files(g_dir));
    st_writer_free(w3);
    unlink(path);

    free(mem);
    st_writer_free(w);
}

static void test_writer_errors(void) {
    vitd_err err = {0};
    st_writer *w = st_writer_create();
    int64_t shape[9] = {2, 2, 1, 1, 1, 1, 1, 1, 1}, neg[1] = {-3};
    float data[4] = {1, 2, 3, 4};
    CHECK_OK(st_writer_add_f32(w, "a", ST_F32, 2, shape, data, &err), &err);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add_f32(w, "a", ST_F32, 2, shape, data, &err));
    CHECK_STR_CONTAINS(err.msg, "added twice");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add_f32(w, "b", ST_F32, 9, shape, data, &err));
    CHECK_STR_CONTAINS(err.msg, "dims");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add(w, "c", ST_U8, 1, neg, data, &err));
    CHECK_STR_CONTAINS(err.msg, "negative");
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add(w, "__metadata__", ST_U8, 1, shape, data, &err));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add_f32(w, "d", ST_I32, 1, shape, data, &err));
    CHECK_STR_CONTAINS(err.msg, "I32");
    CHECK_EQ_INT(1, st_writer_count(w));
    st_writer_free(w);
    st_writer_free(NULL);
    st_close(NULL);
}

/* ---- float conversions ---- */

static void test_conversions(void) {
    vitd_err err = {0};
    uint16_t *all = malloc(65536 * 2);
    float *out = malloc(65536 * 4);
    for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    int64_t shape = 65536;
    st_tensor t = {.name = "all", .ndim = 1, .shape = {65536}, .data = all, .nbytes = 65536 * 2};
    (void)shape;

    /* bf16: every pattern is the top half of the float32 */
    t.dtype = ST_BF16;
    CHECK_OK(st_to_f32(&t, out, &err), &err);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        uint32_t u = (uint32_t)i << 16;
        float ref;
        memcpy(&ref, &u, 4);
        bad += !same_bits(out[i], ref);
    }
    CHECK_MSG(bad == 0, "%d bf16 patterns differ", bad);

    /* f16: every pattern against an independent formula */
    t.dtype = ST_F16;
    CHECK_OK(st_to_f32(&t, out, &err), &err);
    bad = 0;
    for (int i = 0; i < 65536; i++) bad += !same_bits(out[i], ref_f16((uint16_t)i));
    CHECK_MSG(bad == 0, "%d f16 patterns differ", bad);

    /* F64 -> float32 is the C cast; F32 is a copy */
    double d[3] = {1.0 / 3.0, -1e30, 65504.25};
    st_tensor td = {.name = "d", .dtype = ST_F64, .ndim = 1, .shape = {3}, .data = d, .nbytes = 24};
    CHECK_OK(st_to_f32(&td, out, &err), &err);
    for (int i = 0; i < 3; i++) CHECK(same_bits(out[i], (float)d[i]));

    /* integer tensors are refused, naming the tensor */
    st_tensor ti = {.name = "ints", .dtype = ST_I32, .ndim = 1, .shape = {1}, .data = d, .nbytes = 4};
    CHECK_EQ_INT(VITD_E_UNSUPPORTED, st_to_f32(&ti, out, &err));
    CHECK_STR_CONTAINS(err.msg, "ints");

    /* writer rounding: round-to-nearest-even in both directions, and the stored bits read back exactly */
    float src[6] = {1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65520.0f, 1e-7f, 1.0f + 1.0f / 256, -2.5f};
    st_writer *w = st_writer_create();
    int64_t six = 6;
    CHECK_OK(st_writer_add_f32(w, "h", ST_F16, 1, &six, src, &err), &err);
    CHECK_OK(st_writer_add_f32(w, "b", ST_BF16, 1, &six, src, &err), &err);
    uint8_t *mem;
    size_t len;
    CHECK_OK(st_writer_to_memory(w, &mem, &len, &err), &err);
    st_file *f;
    CHECK_OK(st_open_memory(mem, len, &f, &err), &err);
    if (f) {
        float h[6], b[6];
        CHECK_OK(st_to_f32(st_find(f, "h"), h, &err), &err);
        CHECK_OK(st_to_f32(st_find(f, "b"), b, &err), &err);
        CHECK(h[0] == 1.0f);                   /* tie -> even */
        CHECK(h[1] == 1.0f + 4.0f / 2048);     /* tie -> even (up) */
        CHECK(isinf(h[2]) && h[2] > 0);        /* 65520 overflows half */
        CHECK(h[3] == ldexpf(2.0f, -24)); /* 1e-7 is 1.68 units of the smallest subnormal */
        CHECK(h[5] == -2.5f && b[5] == -2.5f);
        CHECK(b[4] == 1.0f);                   /* 1 + 2^-8 is a bf16 tie -> even */
        for (int i = 0; i < 6; i++) CHECK(same_bits(b[i], bf16_to_f32(f32_to_bf16(src[i]))));
        st_close(f);
    }
    free(mem);
    st_writer_free(w);
    free(all);
    free(out);
}

/* ---- streamed tensors ---- */

typedef struct {
    int calls;
    int64_t next;
} fill_state;

static vitd_status ramp_fill(void *user, int64_t first, int64_t count, float *out, vitd_err *err) {
    fill_state *s = user;
    if (first != s->next || count > ST_FILL_CHUNK)
        return vitd_fail(err, VITD_E_INTERNAL, "fill out of order: first %lld, expected %lld", (long long)first,
                         (long long)s->next);
    for (int64_t i = 0; i < count; i++) out[i] = (float)((first + i) % 1000) * 0.25f - 100.0f;
    s->next = first + count;
    s->calls++;
    return VITD_OK;
}

static vitd_status failing_fill(void *user, int64_t first, int64_t count, float *out, vitd_err *err) {
    (void)user, (void)count, (void)out;
    return vitd_fail(err, VITD_E_IO, "generator failed at %lld", (long long)first);
}

static void test_fill(void) {
    vitd_err err = {0};
    int64_t shape[2] = {3, 1000001}; /* 3000003 elements: three full chunks and a tail */
    fill_state a = {0}, b = {0};
    st_writer *w = st_writer_create();
    CHECK_OK(st_writer_add_fill(w, "ramp.f32", ST_F32, 2, shape, ramp_fill, &a, &err), &err);
    CHECK_OK(st_writer_add_fill(w, "ramp.bf16", ST_BF16, 2, shape, ramp_fill, &b, &err), &err);
    CHECK_EQ_INT((size_t)3000003 * 6, st_writer_data_bytes(w));
    char path[128];
    snprintf(path, sizeof path, "%s/fill.safetensors", g_dir);
    CHECK_OK(st_writer_save(w, path, &err), &err);
    CHECK_EQ_INT(3, a.calls);
    st_file *f;
    CHECK_OK(st_open(path, &f, &err), &err);
    if (f) {
        float *x = malloc(3000003 * 4);
        int bad = 0;
        CHECK_OK(st_to_f32(st_find(f, "ramp.f32"), x, &err), &err);
        for (int64_t i = 0; i < 3000003; i++) bad += x[i] != (float)(i % 1000) * 0.25f - 100.0f;
        CHECK_OK(st_to_f32(st_find(f, "ramp.bf16"), x, &err), &err);
        for (int64_t i = 0; i < 3000003; i++)
            bad += x[i] != bf16_to_f32(f32_to_bf16((float)(i % 1000) * 0.25f - 100.0f));
        CHECK_MSG(bad == 0, "%d streamed values differ", bad);
        free(x);
        st_close(f);
    }
    unlink(path);
    st_writer_free(w);

    /* a failing generator fails the save, leaves no file, and passes its message on */
    w = st_writer_create();
    CHECK_OK(st_writer_add_fill(w, "x", ST_F16, 2, shape, failing_fill, NULL, &err), &err);
    CHECK_EQ_INT(VITD_E_IO, st_writer_save(w, path, &err));
    CHECK_STR_CONTAINS(err.msg, "generator failed");
    CHECK_EQ_INT(0, count_files(g_dir));
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_writer_add_fill(w, "y", ST_I8, 2, shape, failing_fill, NULL, &err));
    st_writer_free(w);
}

/* ---- malformed headers ---- */

typedef struct {
    const char *header;
    size_t data_len;
    const char *msg; /* substring the error must contain */
} bad_case;

static const bad_case BAD[] = {
    {"{", 0, "not valid JSON"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "not valid JSON"},
    {"[1,2]", 0, "not a JSON object"},
    {"\"str\"", 0, "not a JSON object"},
    {"{\"a\":3}", 0, "\"a\" is not an object"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype"},
    {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype"},
    {"{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, "unknown dtype \"F128\""},
    {"{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype"},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "no shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}", 4, "no shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "dim 0 is not"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "dim 0 is not"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,\"2\"],\"data_offsets\":[0,8]}}", 8, "dim 1 is not"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4, "dim 0 is not"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "9 dims"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
     "need more than"},
    {"{\"a\":{\"dtype\":\"F64\",\"shape\":[1125899906842624],\"data_offsets\":[0,8]}}", 8, "need"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"b\":0,\"e\":4}}}", 4, "data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "not non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", 4, "not non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "begin 8 > end 4"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, "beyond the data section"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4, "not non-negative"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "holds 4 bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4, "holds 4 bytes"},
    {"{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,4]}}", 8, "need 6"},
    {"{\"__metadata__\":[1],\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "not an object"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "not a string"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "twice"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
     "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "\"a\" appears twice"},
};

static void test_malformed(void) {
    vitd_err err;
    st_file *f;
    for (size_t k = 0; k < sizeof BAD / sizeof BAD[0]; k++) {
        size_t len;
        uint8_t *img = make_image(BAD[k].header, BAD[k].data_len, &len);
        memset(&err, 0, sizeof err);
        f = (st_file *)1;
        vitd_status st = st_open_memory(img, len, &f, &err);
        CHECK_MSG(st == VITD_E_INVALID_ARG, "case %zu (%s): status %d", k, BAD[k].header, st);
        CHECK(f == NULL);
        CHECK_STR_CONTAINS(err.msg, BAD[k].msg);
        free(img);
    }

    /* NUL bytes padding the header (only spaces may) */
    const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t gl = strlen(good), len;
    uint8_t *img = calloc(1, 8 + gl + 2 + 4);
    img[0] = (uint8_t)(gl + 2);
    memcpy(img + 8, good, gl);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open_memory(img, 8 + gl + 2 + 4, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "not valid JSON");
    memset(img + 8 + gl, ' ', 2);
    CHECK_OK(st_open_memory(img, 8 + gl + 2 + 4, &f, &err), &err);
    st_close(f);
    free(img);

    /* lengths: too short, header beyond the file, header over the 100 MB limit */
    uint8_t small[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open_memory(small, 5, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "too short");
    CHECK_OK(st_open_memory(small, 12, &f, &err), &err); /* "{}  " is a valid empty file */
    if (f) {
        CHECK_EQ_INT(0, st_count(f));
        st_close(f);
    }
    small[0] = 5;
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open_memory(small, 12, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "exceeds the file");
    uint64_t huge[3] = {0};
    uint8_t *h = (uint8_t *)huge;
    h[0] = 0x01, h[1] = 0xe1, h[2] = 0xf5, h[3] = 0x05; /* 100000001 */
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open_memory(huge, sizeof huge, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "exceeds the limit");
    memset(h, 0xff, 8);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open_memory(huge, sizeof huge, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "header length");

    /* files: missing, a directory, empty, and a header naming its file */
    char path[128];
    snprintf(path, sizeof path, "%s/missing.safetensors", g_dir);
    CHECK_EQ_INT(VITD_E_IO, st_open(path, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "missing.safetensors");
    CHECK_EQ_INT(VITD_E_IO, st_open(g_dir, &f, &err));
    snprintf(path, sizeof path, "%s/empty.safetensors", g_dir);
    FILE *fp = fopen(path, "wb");
    fclose(fp);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open(path, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "empty.safetensors");
    fp = fopen(path, "wb");
    img = make_image(BAD[8].header, BAD[8].data_len, &len);
    fwrite(img, 1, len, fp);
    fclose(fp);
    free(img);
    CHECK_EQ_INT(VITD_E_INVALID_ARG, st_open(path, &f, &err));
    CHECK_STR_CONTAINS(err.msg, "empty.safetensors: tensor \"a\" has unknown dtype");
    unlink(path);
}

/* ---- fuzz ---- */

/* Opens a mutated image; if it parses, every tensor must lie inside the data section and float ones convert. */
static int fuzz_one(const uint8_t *img, size_t len, float *scratch, size_t scratch_n) {
    st_file *f;
    vitd_err err;
    if (st_open_memory(img, len, &f, &err) != VITD_OK) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | img[i];
    int ok = 1;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        const uint8_t *p = t->data;
        ok &= p >= img + 8 + n && p + t->nbytes <= img + len;
        ok &= (size_t)st_numel(t) * st_dtype_size(t->dtype) == t->nbytes;
        if ((t->dtype == ST_F32 || t->dtype == ST_BF16 || t->dtype == ST_F16 || t->dtype == ST_F64) &&
            (size_t)st_numel(t) <= scratch_n)
            st_to_f32(t, scratch, &err);
        ok &= st_find(f, t->name) != NULL;
    }
    st_close(f);
    return ok ? 1 : -1;
}

static void test_fuzz(void) {
    vitd_err err = {0};
    st_writer *w = spec_writer();
    uint8_t *base;
    size_t len;
    CHECK_OK(st_writer_to_memory(w, &base, &len, &err), &err);
    st_writer_free(w);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
    unsigned long long rng = 77;
    float scratch[4096];
    int parsed = 0, escaped = 0, iters = 20000;
    double t0 = vitd_now();
    for (int it = 0; it < iters && vitd_now() - t0 < 20; it++) {
        size_t n = len;
        uint8_t *img = malloc(len); /* exact size, so a sanitizer build catches any overread */
        memcpy(img, base, len);
        int mode = (int)(check_rng_next(&rng) % 4);
        if (mode == 0) {        /* truncate */
            n = (size_t)(check_rng_next(&rng) % len);
        } else if (mode == 1) { /* flip bytes in the header */
            int k = 1 + (int)(check_rng_next(&rng) % 8);
            for (int j = 0; j < k; j++) img[8 + check_rng_next(&rng) % hlen] ^= (uint8_t)(1 + check_rng_next(&rng) % 255);
        } else if (mode == 2) { /* replace header bytes with JSON-significant characters */
            static const char sig[] = "{}[]\":,-0123456789e.E+ \\";
            int k = 1 + (int)(check_rng_next(&rng) % 4);
            for (int j = 0; j < k; j++) img[8 + check_rng_next(&rng) % hlen] = (uint8_t)sig[check_rng_next(&rng) % 25];
        } else {                /* corrupt the length prefix */
            img[check_rng_next(&rng) % 8] ^= (uint8_t)(1u << (check_rng_next(&rng) % 8));
        }
        int r = fuzz_one(img, n, scratch, 4096);
        parsed += r != 0;
        escaped += r < 0;
        free(img);
    }
    printf("  fuzz: %d mutations in %.2f s, %d still parsed, %d out of bounds\n", iters, vitd_now() - t0, parsed,
           escaped);
    CHECK_EQ_INT(0, escaped);
    CHECK(parsed < iters); /* the mutations do reach the validator */

    /* truncated files through the mmap path */
    char path[128];
    snprintf(path, sizeof path, "%s/trunc.safetensors", g_dir);
    for (size_t cut = 0; cut < len; cut += 1 + len / 40) {
        FILE *fp = fopen(path, "wb");
        fwrite(base, 1, cut, fp);
        fclose(fp);
        st_file *f;
        CHECK_MSG(st_open(path, &f, &err) != VITD_OK, "a file cut at %zu of %zu bytes opened", cut, len);
    }
    unlink(path);
    free(base);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/vitd_st_XXXXXX");
    if (!mkdtemp(g_dir)) SKIP("cannot create a temporary directory");
    test_round_trip();
    test_writer_errors();
    test_conversions();
    test_fill();
    test_malformed();
    test_fuzz();
    check_rm_tree(g_dir);
    return check_done("test_safetensors");
}
