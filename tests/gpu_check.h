/* gpu_check.h — for GPU tests and benchmarks only: CUDA_CHECK aborts the program with the call text, the CUDA
 * error string and file:line (library code uses gpu_common.h's CUDA_TRY, which fills a vitd_err instead). */
#ifndef VITD_GPU_CHECK_H
#define VITD_GPU_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

#define CUDA_CHECK(call)                                                                                  \
    do {                                                                                                  \
        cudaError_t e_ = (call);                                                                          \
        if (e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                                      \
        }                                                                                                 \
    } while (0)

#endif
