/* torch_archive.h — one tensor as a torch.save archive, the form vLLM's `image_embeds` content parts carry
 * (../shared/INTEGRATION.md): torch.load(buf, weights_only=True) gives the tensor back, bit for bit.
 *
 * The archive is an uncompressed ZIP with four entries under "archive/":
 *   data.pkl   a protocol-2 pickle that rebuilds the tensor: torch._utils._rebuild_tensor_v2(storage, 0, shape,
 *              stride, False, OrderedDict()), the storage being persistent id ('storage', torch.<T>Storage, '0',
 *              'cpu', numel)
 *   byteorder  "little"
 *   data/0     the elements, row-major, little-endian; its first byte is 64-byte aligned in the archive (as
 *              torch's own writer does, through a padding extra field)
 *   version    "3\n" (torch refuses an archive without it)
 * Sizes stay below 4 GiB (no ZIP64): a larger tensor is refused.
 *
 * Use: lay the archive out, write the elements where torch_archive_data() points, then seal it (CRC-32 and the
 * headers). The caller owns ta.buf (free()).
 *
 *     torch_archive ta;
 *     if (torch_archive_begin(&ta, ST_BF16, 2, shape, &err)) return err.code;
 *     fill(torch_archive_data(&ta), ta.data_len);
 *     torch_archive_seal(&ta);                    // ta.buf[0..ta.len) is the archive
 *     ...; free(ta.buf);
 *
 * Pure functions, no shared state: thread-safe. */
#ifndef VITD_TORCH_ARCHIVE_H
#define VITD_TORCH_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"
#include "vitd.h"

#define TORCH_ARCHIVE_MAX_DIMS 4

typedef struct {
    uint8_t *buf;          /* the whole archive, malloc'd; owned by the caller after begin */
    size_t len;            /* its size */
    size_t data_off;       /* where data/0's bytes start in buf (a multiple of 64) */
    size_t data_len;       /* numel x element size */
    /* layout, private */
    size_t pkl_off, pkl_len, cd_off;
    st_dtype dtype;
} torch_archive;

/* Lays out an archive for a tensor of dtype (ST_BF16, ST_F16, ST_F32 or ST_I64) and shape (1..4 dimensions,
 * each 0..2^31-1) and allocates ta->buf. VITD_E_INVALID_ARG for another dtype or a bad shape, VITD_E_TOO_LARGE
 * past 4 GiB, VITD_E_NOMEM when the buffer cannot be had. On failure ta->buf is NULL. */
vitd_status torch_archive_begin(torch_archive *ta, st_dtype dtype, int ndim, const int64_t *shape, vitd_err *err);
/* Where the caller writes the tensor's data_len bytes. */
static inline uint8_t *torch_archive_data(torch_archive *ta) { return ta->buf + ta->data_off; }
/* Computes the CRC-32 of every entry and writes the ZIP headers: buf[0..len) is then a complete archive. */
void torch_archive_seal(torch_archive *ta);

/* One-call form for small tensors: the archive of `data` (numel x element size bytes), malloc'd into *out. */
vitd_status torch_archive_of(st_dtype dtype, int ndim, const int64_t *shape, const void *data, uint8_t **out,
                             size_t *len, vitd_err *err);

#endif
