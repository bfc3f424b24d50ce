/* gpu_check.h — for GPU tests and benchmarks only: CUDA_CHECK aborts the program with the call text, the CUDA
 * error string and file:line (library code uses gpu_common.h's CUDA_TRY, which fills a vitd_err instead);
 * gpu_require_sm90 skips a test where vitd's kernels cannot run; gpu_rand_bf16 / gpu_to_bf16 make the kernel tests'
 * data; gpu_guarded / gpu_guard_ok_free wrap outputs in canary bands. */
#ifndef VITD_GPU_CHECK_H
#define VITD_GPU_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#include "check.h"
#include "util.h"

#define CUDA_CHECK(call)                                                                                  \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

/* Device 0's properties into *prop; exits 77 (ctest's skip code, "SKIP: ..." on stdout) when there is no CUDA
 * device or its compute capability is below 9.0 (vitd's kernels are built for sm_90a). */
static inline void gpu_require_sm90(struct cudaDeviceProp *prop) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("SKIP: no CUDA device\n");
        exit(77);
    }
    CUDA_CHECK(cudaGetDeviceProperties(prop, 0));
    if (prop->major < 9) {
        printf("SKIP: GPU %s has compute capability %d.%d; vitd's kernels need >= 9.0 (sm_90a)\n", prop->name,
               prop->major, prop->minor);
        exit(77);
    }
}

/* [rows, dim] normal values * scale (check_rng_normal from *seed) with 20x outliers in channels 3, dim/2 and
 * dim-1, rounded to bf16 and returned as floats (malloc'd): the kernel tests' data, whose references see exactly the
 * bf16 values the kernels see. */
static inline float *gpu_rand_bf16(unsigned long long *seed, size_t rows, size_t dim, double scale) {
    float *x = malloc(rows * dim * sizeof(float));
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < dim; c++) {
            double v = check_rng_normal(seed) * scale;
            if (c == 3 || c == dim / 2 || c == dim - 1) v *= 20;
            x[r * dim + c] = bf16_to_f32(f32_to_bf16((float)v));
        }
    return x;
}

/* bf16 bit patterns of x[0..n) (malloc'd). */
static inline uint16_t *gpu_to_bf16(const float *x, size_t n) {
    uint16_t *h = malloc(n * 2);
    for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(x[i]);
    return h;
}

/* Device buffers between guard bands: GPU_GUARD bytes of GPU_CANARY before and after, so a kernel writing outside
 * its output shows. gpu_guarded returns the inner pointer; gpu_guard_ok_free returns 1 if both bands still hold
 * the canary and frees the buffer. */
#define GPU_GUARD 4096
#define GPU_CANARY 0xA5

static inline void *gpu_guarded(size_t bytes) {
    char *p;
    CUDA_CHECK(cudaMalloc((void **)&p, bytes + 2 * GPU_GUARD));
    CUDA_CHECK(cudaMemset(p, GPU_CANARY, bytes + 2 * GPU_GUARD));
    return p + GPU_GUARD;
}

static inline int gpu_guard_ok_free(void *inner, size_t bytes) {
    char *p = (char *)inner - GPU_GUARD;
    unsigned char *h = malloc(2 * GPU_GUARD);
    CUDA_CHECK(cudaMemcpy(h, p, GPU_GUARD, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(h + GPU_GUARD, (char *)inner + bytes, GPU_GUARD, cudaMemcpyDeviceToHost));
    int ok = 1;
    for (int i = 0; i < 2 * GPU_GUARD; i++) ok &= h[i] == GPU_CANARY;
    free(h);
    CUDA_CHECK(cudaFree(p));
    return ok;
}

#endif
