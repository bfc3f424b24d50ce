/* torch_archive.c — a torch.save archive of one tensor (torch_archive.h): a stored ZIP whose entries are the
 * pickle that rebuilds the tensor, the byte order, the raw elements and the format version.
 *
 * The pickle (protocol 2) is the smallest program torch's weights-only unpickler accepts for a tensor:
 *
 *     PROTO 2
 *     GLOBAL 'torch._utils _rebuild_tensor_v2'
 *     MARK
 *       MARK 'storage' GLOBAL 'torch BFloat16Storage' '0' 'cpu' <numel> TUPLE BINPERSID    storage
 *       <0>                                                                                storage offset
 *       MARK <d0> <d1> ... TUPLE                                                           shape
 *       MARK <s0> <s1> ... TUPLE                                                           stride (row-major)
 *       NEWFALSE                                                                           requires_grad
 *       GLOBAL 'collections OrderedDict' EMPTY_TUPLE REDUCE                                backward hooks
 *     TUPLE REDUCE STOP
 *
 * Integers use the shortest opcode that holds them (BININT1, BININT2, BININT: every one is below 2^31, as the
 * 4 GiB bound keeps them), strings BINUNICODE (protocol 4's SHORT_BINUNICODE is not among what the weights-only
 * unpickler takes).
 * ZIP: local header + data for each entry, then the central directory and its end record; every entry stored
 * (method 0), dated 1980-01-01, its CRC-32 from zlib. data/0's local header carries a padding extra field ("FB",
 * as torch's writer names it) so the elements start on a 64-byte boundary. */
#include "torch_archive.h"

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#define ZIP_LOCAL_SIG 0x04034b50u
#define ZIP_CENTRAL_SIG 0x02014b50u
#define ZIP_END_SIG 0x06054b50u
#define ZIP_LOCAL_FIXED 30
#define ZIP_CENTRAL_FIXED 46
#define ZIP_END_FIXED 22
#define ZIP_VERSION 20          /* 2.0: stored entries, no ZIP64 */
#define ZIP_DATE_1980 0x0021    /* DOS date 1980-01-01 */
#define DATA_ALIGN 64
#define PICKLE_MAX 512         /* the worst case, 4 dimensions of 5-byte integers, is under 200 */

enum { E_PKL, E_BYTEORDER, E_DATA, E_VERSION, N_ENTRIES };
static const char *const k_names[N_ENTRIES] = {"archive/data.pkl", "archive/byteorder", "archive/data/0",
                                               "archive/version"};
static const char k_byteorder[] = "little";
static const char k_version[] = "3\n";

/* ---- little-endian writes ---- */

static uint8_t *put16(uint8_t *p, unsigned v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    return p + 2;
}

static uint8_t *put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
    return p + 4;
}

/* ---- the pickle ---- */

typedef struct {
    uint8_t b[PICKLE_MAX];
    size_t n;
} pk;

static void pk_bytes(pk *p, const void *s, size_t n) {
    memcpy(p->b + p->n, s, n);
    p->n += n;
}

static void pk_op(pk *p, char op) { p->b[p->n++] = (uint8_t)op; }

/* GLOBAL: "c<module>\n<name>\n" */
static void pk_global(pk *p, const char *module, const char *name) {
    pk_op(p, 'c');
    pk_bytes(p, module, strlen(module));
    pk_op(p, '\n');
    pk_bytes(p, name, strlen(name));
    pk_op(p, '\n');
}

/* BINUNICODE: 'X', u32 length, UTF-8 bytes */
static void pk_str(pk *p, const char *s) {
    size_t n = strlen(s);
    uint8_t len[4];
    put32(len, (uint32_t)n);
    pk_op(p, 'X');
    pk_bytes(p, len, 4);
    pk_bytes(p, s, n);
}

/* A non-negative integer below 2^31 (torch_archive_begin bounds every dimension and count): BININT1 'K'
 * (< 2^8), BININT2 'M' (< 2^16), else BININT 'J' (signed 32-bit). */
static void pk_int(pk *p, int64_t v) {
    uint8_t t[4];
    if (v < 256) {
        pk_op(p, 'K');
        t[0] = (uint8_t)v;
        pk_bytes(p, t, 1);
    } else if (v < 65536) {
        pk_op(p, 'M');
        put16(t, (unsigned)v);
        pk_bytes(p, t, 2);
    } else {
        pk_op(p, 'J');
        put32(t, (uint32_t)v);
        pk_bytes(p, t, 4);
    }
}

static const char *storage_name(st_dtype d) {
    switch (d) {
    case ST_BF16: return "BFloat16Storage";
    case ST_F16: return "HalfStorage";
    case ST_F32: return "FloatStorage";
    case ST_I64: return "LongStorage";
    default: return NULL;
    }
}

static void pickle_tensor(pk *p, st_dtype d, int ndim, const int64_t *shape, int64_t numel) {
    p->n = 0;
    pk_op(p, '\x80');
    pk_op(p, 2);
    pk_global(p, "torch._utils", "_rebuild_tensor_v2");
    pk_op(p, '(');
    pk_op(p, '(');
    pk_str(p, "storage");
    pk_global(p, "torch", storage_name(d));
    pk_str(p, "0");
    pk_str(p, "cpu");
    pk_int(p, numel);
    pk_op(p, 't');
    pk_op(p, 'Q');
    pk_int(p, 0);
    pk_op(p, '(');
    for (int i = 0; i < ndim; i++) pk_int(p, shape[i]);
    pk_op(p, 't');
    pk_op(p, '(');
    for (int i = 0; i < ndim; i++) {
        int64_t stride = 1;
        for (int j = i + 1; j < ndim; j++) stride *= shape[j];
        pk_int(p, stride);
    }
    pk_op(p, 't');
    pk_op(p, '\x89');
    pk_global(p, "collections", "OrderedDict");
    pk_op(p, ')');
    pk_op(p, 'R');
    pk_op(p, 't');
    pk_op(p, 'R');
    pk_op(p, '.');
}

/* ---- the ZIP ---- */

/* Sizes of each entry's local record (header + name + extra) and contents, in archive order. */
typedef struct {
    size_t off[N_ENTRIES];     /* offset of the local header */
    size_t extra[N_ENTRIES];   /* extra field bytes in the local header */
    size_t size[N_ENTRIES];    /* contents */
} zip_layout;

static size_t local_len(const zip_layout *z, int e) { return ZIP_LOCAL_FIXED + strlen(k_names[e]) + z->extra[e]; }

vitd_status torch_archive_begin(torch_archive *ta, st_dtype dtype, int ndim, const int64_t *shape, vitd_err *err) {
    memset(ta, 0, sizeof *ta);
    if (!storage_name(dtype))
        return vitd_fail(err, VITD_E_INVALID_ARG, "torch archive: dtype %s is not one of BF16, F16, F32, I64",
                         st_dtype_name(dtype));
    if (ndim < 1 || ndim > TORCH_ARCHIVE_MAX_DIMS)
        return vitd_fail(err, VITD_E_INVALID_ARG, "torch archive: %d dimensions (1 to %d)", ndim,
                         TORCH_ARCHIVE_MAX_DIMS);
    int64_t numel = 1, span = 1; /* span: the product of the nonzero dimensions, which bounds every stride */
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || shape[i] > INT32_MAX || (shape[i] > 0 && span * shape[i] > INT32_MAX))
            return vitd_fail(err, VITD_E_INVALID_ARG, "torch archive: bad dimension %d (%lld), or a shape of 2^31 "
                             "elements or more", i, (long long)shape[i]);
        numel *= shape[i];
        if (shape[i] > 0) span *= shape[i];
    }
    size_t es = st_dtype_size(dtype);
    if ((uint64_t)numel > (UINT64_C(1) << 32) / es)
        return vitd_fail(err, VITD_E_TOO_LARGE, "torch archive: %lld elements of %zu bytes need ZIP64 (> 4 GiB)",
                         (long long)numel, es);
    pk p;
    pickle_tensor(&p, dtype, ndim, shape, numel);
    zip_layout z = {.size = {p.n, sizeof k_byteorder - 1, (size_t)numel * es, sizeof k_version - 1}};
    size_t at = 0;
    for (int e = 0; e < N_ENTRIES; e++) {
        z.off[e] = at;
        if (e == E_DATA) {
            size_t start = at + ZIP_LOCAL_FIXED + strlen(k_names[e]) + 4; /* 4: the extra field's own header */
            z.extra[e] = 4 + (DATA_ALIGN - start % DATA_ALIGN) % DATA_ALIGN;
        }
        at += local_len(&z, e) + z.size[e];
    }
    size_t cd_off = at;
    for (int e = 0; e < N_ENTRIES; e++) at += ZIP_CENTRAL_FIXED + strlen(k_names[e]);
    size_t total = at + ZIP_END_FIXED;
    if (total > UINT32_MAX)
        return vitd_fail(err, VITD_E_TOO_LARGE, "torch archive: %zu bytes need ZIP64 (> 4 GiB)", total);
    ta->buf = malloc(total);
    if (!ta->buf) return vitd_fail(err, VITD_E_NOMEM, "torch archive: out of memory for %zu bytes", total);
    ta->len = total;
    ta->dtype = dtype;
    ta->pkl_off = z.off[E_PKL] + local_len(&z, E_PKL);
    ta->pkl_len = p.n;
    ta->data_off = z.off[E_DATA] + local_len(&z, E_DATA);
    ta->data_len = z.size[E_DATA];
    ta->cd_off = cd_off;
    /* contents other than the tensor's go in now; headers are written by seal */
    memcpy(ta->buf + ta->pkl_off, p.b, p.n);
    memcpy(ta->buf + z.off[E_BYTEORDER] + local_len(&z, E_BYTEORDER), k_byteorder, z.size[E_BYTEORDER]);
    memcpy(ta->buf + z.off[E_VERSION] + local_len(&z, E_VERSION), k_version, z.size[E_VERSION]);
    return VITD_OK;
}

/* The layout again, from what begin kept (it is a pure function of the pickle and data sizes). */
static zip_layout layout_of(const torch_archive *ta) {
    zip_layout z = {.size = {ta->pkl_len, sizeof k_byteorder - 1, ta->data_len, sizeof k_version - 1}};
    size_t at = 0;
    for (int e = 0; e < N_ENTRIES; e++) {
        z.off[e] = at;
        if (e == E_DATA) {
            size_t start = at + ZIP_LOCAL_FIXED + strlen(k_names[e]) + 4;
            z.extra[e] = 4 + (DATA_ALIGN - start % DATA_ALIGN) % DATA_ALIGN;
        }
        at += local_len(&z, e) + z.size[e];
    }
    return z;
}

static uint32_t crc_of(const uint8_t *p, size_t n) { return (uint32_t)crc32_z(crc32_z(0, NULL, 0), p, n); }

void torch_archive_seal(torch_archive *ta) {
    zip_layout z = layout_of(ta);
    uint32_t crc[N_ENTRIES];
    for (int e = 0; e < N_ENTRIES; e++) {
        uint8_t *h = ta->buf + z.off[e];
        size_t nl = strlen(k_names[e]);
        crc[e] = crc_of(h + local_len(&z, e), z.size[e]);
        uint8_t *q = put32(h, ZIP_LOCAL_SIG);
        q = put16(q, ZIP_VERSION);
        q = put16(q, 0);                       /* flags */
        q = put16(q, 0);                       /* stored */
        q = put16(q, 0);                       /* time */
        q = put16(q, ZIP_DATE_1980);
        q = put32(q, crc[e]);
        q = put32(q, (uint32_t)z.size[e]);     /* compressed = uncompressed */
        q = put32(q, (uint32_t)z.size[e]);
        q = put16(q, (unsigned)nl);
        q = put16(q, (unsigned)z.extra[e]);
        memcpy(q, k_names[e], nl);
        q += nl;
        if (z.extra[e]) {
            q = put16(q, 0x4246);              /* "FB": padding, as torch's writer marks it */
            q = put16(q, (unsigned)(z.extra[e] - 4));
            memset(q, 'Z', z.extra[e] - 4);
        }
    }
    uint8_t *q = ta->buf + ta->cd_off;
    for (int e = 0; e < N_ENTRIES; e++) {
        size_t nl = strlen(k_names[e]);
        q = put32(q, ZIP_CENTRAL_SIG);
        q = put16(q, ZIP_VERSION);             /* made by */
        q = put16(q, ZIP_VERSION);             /* needed */
        q = put16(q, 0);
        q = put16(q, 0);
        q = put16(q, 0);
        q = put16(q, ZIP_DATE_1980);
        q = put32(q, crc[e]);
        q = put32(q, (uint32_t)z.size[e]);
        q = put32(q, (uint32_t)z.size[e]);
        q = put16(q, (unsigned)nl);
        q = put16(q, 0);                       /* extra */
        q = put16(q, 0);                       /* comment */
        q = put16(q, 0);                       /* disk */
        q = put16(q, 0);                       /* internal attributes */
        q = put32(q, 0);                       /* external attributes */
        q = put32(q, (uint32_t)z.off[e]);
        memcpy(q, k_names[e], nl);
        q += nl;
    }
    size_t cd_len = (size_t)(q - (ta->buf + ta->cd_off));
    q = put32(q, ZIP_END_SIG);
    q = put16(q, 0);
    q = put16(q, 0);
    q = put16(q, N_ENTRIES);
    q = put16(q, N_ENTRIES);
    q = put32(q, (uint32_t)cd_len);
    q = put32(q, (uint32_t)ta->cd_off);
    put16(q, 0);
}

vitd_status torch_archive_of(st_dtype dtype, int ndim, const int64_t *shape, const void *data, uint8_t **out,
                             size_t *len, vitd_err *err) {
    torch_archive ta;
    *out = NULL;
    vitd_status st = torch_archive_begin(&ta, dtype, ndim, shape, err);
    if (st) return st;
    memcpy(torch_archive_data(&ta), data, ta.data_len);
    torch_archive_seal(&ta);
    *out = ta.buf;
    *len = ta.len;
    return VITD_OK;
}
