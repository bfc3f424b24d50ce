/* safetensors.h — reading (memory-mapped) and writing the safetensors format, vitd's binary format everywhere.
 *
 * Format: 8-byte little-endian header length n, n bytes of JSON {"name": {"dtype", "shape", "data_offsets":
 * [begin, end]}, "__metadata__": {...}}, then the data; offsets are relative to the end of the header.
 * The reader validates everything a hostile file could get wrong (header length, JSON, dtype names, offsets in
 * bounds and matching shape x dtype size, overlapping is allowed as the spec does not forbid it) before handing out
 * pointers. Reader and writer objects are not shared between threads.
 *
 * Limits (as the official library): header at most 100 MB (ST_MAX_HEADER), at most ST_MAX_DIMS dimensions.
 * The writer emits the official layout: compact JSON, "__metadata__" first, tensors contiguous in insertion order,
 * the header padded with spaces so the data starts 8-byte aligned. A tensor's data pointer is therefore aligned
 * to its element size only when every tensor before it has a size that keeps it so (always true when all tensors
 * share one dtype); read mixed files through memcpy or st_to_f32(), which never assumes alignment.
 */
#ifndef VITD_SAFETENSORS_H
#define VITD_SAFETENSORS_H

#include "vitd.h"

/* The byte-sized dtypes of the format. A header naming any other dtype is rejected by the reader. */
typedef enum {
    ST_F32, ST_F16, ST_BF16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL, ST_F8_E4M3,
    ST_U16, ST_U32, ST_U64, ST_F8_E5M2,
    ST_N_DTYPES
} st_dtype;

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000u

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* into the mapping (reader) */
    size_t nbytes;
} st_tensor;

size_t st_dtype_size(st_dtype t);
const char *st_dtype_name(st_dtype t); /* "F32", "BF16", ... as in the format */
/* Parses a dtype name of the format ("BF16"); returns 0 and sets *out, or -1 for an unknown name. */
int st_dtype_parse(const char *name, st_dtype *out);
int64_t st_numel(const st_tensor *t);

/* ---- reader ---- */
typedef struct st_file st_file;

/* Maps the file read-only and parses its header. On success *out owns the mapping; free with st_close(). */
vitd_status st_open(const char *path, st_file **out, vitd_err *err);
/* Parses a safetensors image already in memory (not copied: buf must outlive the st_file). */
vitd_status st_open_memory(const void *buf, size_t len, st_file **out, vitd_err *err);
void st_close(st_file *f);
int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent */
/* Value of a __metadata__ key, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

/* Converts any float dtype (F32, F16, BF16, F64) to float32; out holds st_numel(t) floats. */
vitd_status st_to_f32(const st_tensor *t, float *out, vitd_err *err);

/* ---- writer ---- */
typedef struct st_writer st_writer;

st_writer *st_writer_create(void);
void st_writer_free(st_writer *w);
/* Adds a tensor; data (nbytes = numel x dtype size) is copied. Names must be unique (VITD_E_INVALID_ARG). */
vitd_status st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                          const void *data, vitd_err *err);
/* Adds a tensor whose nbytes of data stay the caller's (not copied): they must stay valid and unchanged until the
 * last save or segment use. */
vitd_status st_writer_add_ref(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                              const void *data, vitd_err *err);
/* Adds a float32 source converted to dtype (F32, F16 or BF16, round-to-nearest-even). */
vitd_status st_writer_add_f32(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                              const float *data, vitd_err *err);
/* Produces elements [first, first + count) of a tensor as float32 into out (count <= ST_FILL_CHUNK). Called at
 * save time, in increasing order of first, once per chunk. */
#define ST_FILL_CHUNK ((int64_t)1 << 20)
typedef vitd_status (*st_fill_fn)(void *user, int64_t first, int64_t count, float *out, vitd_err *err);
/* Adds a tensor whose data is generated while saving (dtype F32, F16 or BF16), so a writer never holds a large
 * model in memory: st_writer_save() streams it chunk by chunk. user must stay valid until the last save. */
vitd_status st_writer_add_fill(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                               st_fill_fn fill, void *user, vitd_err *err);
/* Sets a __metadata__ string (replacing an earlier value of the same key; keys keep first-insertion order). */
vitd_status st_writer_set_metadata(st_writer *w, const char *key, const char *value, vitd_err *err);
/* Number of tensors added and the total bytes of their data (the index's metadata.total_size). */
int st_writer_count(const st_writer *w);
size_t st_writer_data_bytes(const st_writer *w);
/* Writes atomically: a temporary file in the same directory, fsync, rename over path, fsync of the directory.
 * On failure path is untouched and the temporary file removed. */
vitd_status st_writer_save(const st_writer *w, const char *path, vitd_err *err);
/* The file as pieces, for writing it out without assembling it (a vectored send): *header (malloc'd; free())
 * of *header_len bytes holds the length and the padded JSON, then seg[0..st_writer_count) the tensors' bytes in
 * order (pointers into the writer's copies or the callers' referenced data). VITD_E_INVALID_ARG when a tensor is
 * generated while saving (add_fill). */
typedef struct {
    const void *data;
    size_t len;
} st_segment;
vitd_status st_writer_to_segments(const st_writer *w, uint8_t **header, size_t *header_len, st_segment *seg,
                                  vitd_err *err);
/* Serialises to one malloc'd buffer (*buf owned by the caller, free()). */
vitd_status st_writer_to_memory(const st_writer *w, uint8_t **buf, size_t *len, vitd_err *err);

#endif
