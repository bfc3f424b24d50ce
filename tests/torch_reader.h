/* torch_reader.h — reads a torch.save archive of one tensor back, written here from the formats themselves (the
 * ZIP application note and the pickle opcodes), not from vitd's writer: the end-of-central-directory record, the
 * central directory, each local header (its name, sizes and CRC-32 must agree with the directory's, the CRC with
 * zlib's over the bytes), then data.pkl interpreted by a small stack machine for the opcodes a tensor pickle uses.
 * The result says what torch.load would rebuild: storage class, key, location, numel, shape, stride, offset and
 * the element bytes. Header-only; for tests. */
#ifndef VITD_TORCH_READER_H
#define VITD_TORCH_READER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <zlib.h>

#define TR_MAX_ENTRIES 8

typedef struct {
    char name[64];
    const uint8_t *data;     /* into the archive */
    uint32_t size;
    size_t data_off;         /* offset of the data in the archive */
} tr_entry;

typedef struct {
    int n_entries;
    tr_entry e[TR_MAX_ENTRIES];
    char storage[48];        /* "BFloat16Storage", ... */
    char key[64], location[64];
    int64_t numel, offset;
    int ndim;
    int64_t shape[8], stride[8];
    bool requires_grad;
    const uint8_t *data;     /* archive/data/<key> */
    uint32_t data_size;
    char version[8], byteorder[16];
    char why[160];           /* on failure: what was wrong */
} tr_tensor;

static inline uint32_t tr_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline unsigned tr_u16(const uint8_t *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }

static inline const tr_entry *tr_find(const tr_tensor *t, const char *name) {
    for (int i = 0; i < t->n_entries; i++)
        if (!strcmp(t->e[i].name, name)) return &t->e[i];
    return NULL;
}

/* ---- the pickle: values on a stack ---- */

typedef enum { TV_MARK, TV_INT, TV_STR, TV_GLOBAL, TV_TUPLE, TV_PERSID, TV_FALSE, TV_OBJ } tv_kind;
typedef struct {
    tv_kind k;
    int64_t i;               /* TV_INT */
    char s[64];              /* TV_STR, TV_GLOBAL ("module name") */
    int first, n;            /* TV_TUPLE / TV_PERSID / TV_OBJ: items in the pool */
} tv;

typedef struct {
    tv stack[64];
    int sp;
    tv pool[128];            /* tuple items, kept after they leave the stack */
    int np;
} tr_vm;

static inline bool tr_push(tr_vm *m, tv v) {
    if (m->sp >= 64) return false;
    m->stack[m->sp++] = v;
    return true;
}

/* Pops down to the last MARK into a tuple value. */
static inline bool tr_tuple_from_mark(tr_vm *m, tv *out) {
    int mk = m->sp - 1;
    while (mk >= 0 && m->stack[mk].k != TV_MARK) mk--;
    if (mk < 0) return false;
    int n = m->sp - mk - 1;
    if (m->np + n > 128) return false;
    *out = (tv){.k = TV_TUPLE, .first = m->np, .n = n};
    for (int j = 0; j < n; j++) m->pool[m->np++] = m->stack[mk + 1 + j];
    m->sp = mk;
    return true;
}

/* Interprets data.pkl; fills t's storage, key, location, numel, offset, shape, stride, requires_grad. */
static inline bool tr_pickle(const uint8_t *p, size_t n, tr_tensor *t) {
    tr_vm m = {.sp = 0};
    size_t i = 0;
    if (n < 2 || p[0] != 0x80 || p[1] != 2) return snprintf(t->why, sizeof t->why, "not protocol 2"), false;
    i = 2;
    tv result = {.k = TV_MARK};
    while (i < n) {
        uint8_t op = p[i++];
        tv v = {0}, a, b;
        switch (op) {
        case 'c': { /* GLOBAL module\nname\n */
            const uint8_t *e1 = memchr(p + i, '\n', n - i);
            const uint8_t *e2 = e1 ? memchr(e1 + 1, '\n', n - (size_t)(e1 + 1 - p)) : NULL;
            if (!e2) return snprintf(t->why, sizeof t->why, "truncated GLOBAL"), false;
            v.k = TV_GLOBAL;
            snprintf(v.s, sizeof v.s, "%.*s %.*s", (int)(e1 - (p + i)), (const char *)p + i, (int)(e2 - e1 - 1),
                     (const char *)e1 + 1);
            i = (size_t)(e2 + 1 - p);
            if (!tr_push(&m, v)) return false;
            break;
        }
        case '(': v.k = TV_MARK; if (!tr_push(&m, v)) return false; break;
        case 'X': { /* BINUNICODE */
            if (i + 4 > n) return false;
            uint32_t l = tr_u32(p + i);
            i += 4;
            if (i + l > n || l >= sizeof v.s) return snprintf(t->why, sizeof t->why, "bad BINUNICODE"), false;
            v.k = TV_STR;
            memcpy(v.s, p + i, l);
            i += l;
            if (!tr_push(&m, v)) return false;
            break;
        }
        case 'K': if (i + 1 > n) return false; v.k = TV_INT; v.i = p[i]; i += 1; tr_push(&m, v); break;
        case 'M': if (i + 2 > n) return false; v.k = TV_INT; v.i = tr_u16(p + i); i += 2; tr_push(&m, v); break;
        case 'J': if (i + 4 > n) return false; v.k = TV_INT; v.i = (int32_t)tr_u32(p + i); i += 4; tr_push(&m, v); break;
        case 't': if (!tr_tuple_from_mark(&m, &v) || !tr_push(&m, v)) return false; break;
        case ')': v.k = TV_TUPLE; v.first = m.np; v.n = 0; tr_push(&m, v); break;
        case 'Q': /* BINPERSID */
            if (m.sp < 1 || m.stack[m.sp - 1].k != TV_TUPLE) return snprintf(t->why, sizeof t->why, "BINPERSID"), false;
            m.stack[m.sp - 1].k = TV_PERSID;
            break;
        case 0x89: v.k = TV_FALSE; tr_push(&m, v); break;
        case 'R': /* REDUCE: callable, args -> object */
            if (m.sp < 2) return false;
            b = m.stack[--m.sp];
            a = m.stack[--m.sp];
            if (a.k != TV_GLOBAL || b.k != TV_TUPLE || m.np + 1 > 128)
                return snprintf(t->why, sizeof t->why, "REDUCE of a non-global"), false;
            m.pool[m.np] = b;
            v = (tv){.k = TV_OBJ, .first = m.np++, .n = 1};
            snprintf(v.s, sizeof v.s, "%s", a.s);
            tr_push(&m, v);
            break;
        case '.':
            if (m.sp != 1) return snprintf(t->why, sizeof t->why, "%d values left at STOP", m.sp), false;
            result = m.stack[0];
            i = n;
            break;
        default: return snprintf(t->why, sizeof t->why, "opcode 0x%02x is not a tensor pickle's", op), false;
        }
    }
    if (result.k != TV_OBJ || strcmp(result.s, "torch._utils _rebuild_tensor_v2"))
        return snprintf(t->why, sizeof t->why, "the pickle does not rebuild a tensor"), false;
    tv args = m.pool[result.first];
    if (args.n != 6) return snprintf(t->why, sizeof t->why, "_rebuild_tensor_v2 takes 6 arguments, got %d", args.n), false;
    tv *x = &m.pool[args.first];
    if (x[0].k != TV_PERSID || x[0].n != 5) return snprintf(t->why, sizeof t->why, "no storage persistent id"), false;
    tv *pid = &m.pool[x[0].first];
    if (pid[0].k != TV_STR || strcmp(pid[0].s, "storage") || pid[1].k != TV_GLOBAL || pid[2].k != TV_STR ||
        pid[3].k != TV_STR || pid[4].k != TV_INT)
        return snprintf(t->why, sizeof t->why, "bad storage persistent id"), false;
    if (strncmp(pid[1].s, "torch ", 6)) return snprintf(t->why, sizeof t->why, "storage class %s", pid[1].s), false;
    snprintf(t->storage, sizeof t->storage, "%s", pid[1].s + 6);
    snprintf(t->key, sizeof t->key, "%s", pid[2].s);
    snprintf(t->location, sizeof t->location, "%s", pid[3].s);
    t->numel = pid[4].i;
    if (x[1].k != TV_INT || x[2].k != TV_TUPLE || x[3].k != TV_TUPLE || x[2].n != x[3].n || x[2].n > 8 ||
        x[4].k != TV_FALSE || x[5].k != TV_OBJ || strcmp(x[5].s, "collections OrderedDict"))
        return snprintf(t->why, sizeof t->why, "bad offset, shape, stride, requires_grad or hooks"), false;
    t->offset = x[1].i;
    t->ndim = x[2].n;
    for (int d = 0; d < t->ndim; d++) {
        tv s = m.pool[x[2].first + d], st = m.pool[x[3].first + d];
        if (s.k != TV_INT || st.k != TV_INT) return false;
        t->shape[d] = s.i;
        t->stride[d] = st.i;
    }
    t->requires_grad = false;
    return true;
}

/* Reads the archive buf[0..len): every check above; false with t->why on the first that fails. */
static inline bool tr_read(const uint8_t *buf, size_t len, tr_tensor *t) {
    memset(t, 0, sizeof *t);
    if (len < 22) return snprintf(t->why, sizeof t->why, "shorter than an end record"), false;
    const uint8_t *end = buf + len - 22; /* no archive comment */
    if (tr_u32(end) != 0x06054b50u) return snprintf(t->why, sizeof t->why, "no end of central directory"), false;
    unsigned n = tr_u16(end + 10);
    uint32_t cd_size = tr_u32(end + 12), cd_off = tr_u32(end + 16);
    if (n > TR_MAX_ENTRIES || (size_t)cd_off + cd_size != len - 22)
        return snprintf(t->why, sizeof t->why, "central directory at %u+%u in %zu", cd_off, cd_size, len), false;
    const uint8_t *c = buf + cd_off;
    for (unsigned k = 0; k < n; k++) {
        if (c + 46 > end || tr_u32(c) != 0x02014b50u) return snprintf(t->why, sizeof t->why, "directory entry %u", k), false;
        unsigned method = tr_u16(c + 10), nl = tr_u16(c + 28), xl = tr_u16(c + 30), cl = tr_u16(c + 32);
        uint32_t crc = tr_u32(c + 16), csize = tr_u32(c + 20), usize = tr_u32(c + 24), lho = tr_u32(c + 42);
        tr_entry *e = &t->e[t->n_entries++];
        if (nl >= sizeof e->name || method != 0 || csize != usize)
            return snprintf(t->why, sizeof t->why, "entry %u: name %u, method %u, sizes %u/%u", k, nl, method, csize,
                            usize), false;
        memcpy(e->name, c + 46, nl);
        const uint8_t *l = buf + lho;
        if ((size_t)lho + 30 > len || tr_u32(l) != 0x04034b50u)
            return snprintf(t->why, sizeof t->why, "%s: no local header at %u", e->name, lho), false;
        unsigned lnl = tr_u16(l + 26), lxl = tr_u16(l + 28);
        if (tr_u32(l + 14) != crc || tr_u32(l + 18) != csize || tr_u32(l + 22) != usize || lnl != nl ||
            memcmp(l + 30, e->name, nl))
            return snprintf(t->why, sizeof t->why, "%s: local header disagrees with the directory", e->name), false;
        e->data_off = lho + 30 + lnl + lxl;
        if (e->data_off + usize > cd_off) return snprintf(t->why, sizeof t->why, "%s: data overruns", e->name), false;
        e->data = buf + e->data_off;
        e->size = usize;
        if ((uint32_t)crc32_z(crc32_z(0, NULL, 0), e->data, usize) != crc)
            return snprintf(t->why, sizeof t->why, "%s: CRC-32 mismatch", e->name), false;
        c += 46 + nl + xl + cl;
    }
    /* torch's rules: every entry under one folder, a version record, the pickle */
    for (int k = 0; k < t->n_entries; k++)
        if (strncmp(t->e[k].name, "archive/", 8))
            return snprintf(t->why, sizeof t->why, "%s is not under archive/", t->e[k].name), false;
    const tr_entry *ver = tr_find(t, "archive/version"), *bo = tr_find(t, "archive/byteorder");
    const tr_entry *pkl = tr_find(t, "archive/data.pkl");
    if (!ver || !pkl) return snprintf(t->why, sizeof t->why, "no archive/version or archive/data.pkl"), false;
    snprintf(t->version, sizeof t->version, "%.*s", (int)ver->size, (const char *)ver->data);
    if (bo) snprintf(t->byteorder, sizeof t->byteorder, "%.*s", (int)bo->size, (const char *)bo->data);
    if (!tr_pickle(pkl->data, pkl->size, t)) return false;
    char dn[96];
    snprintf(dn, sizeof dn, "archive/data/%s", t->key);
    const tr_entry *d = tr_find(t, dn);
    if (!d) return snprintf(t->why, sizeof t->why, "no %s", dn), false;
    t->data = d->data;
    t->data_size = d->size;
    return true;
}

#endif
