/* gpu_common.h — error plumbing shared by the GPU modules (gpu_*.c): CUDA_TRY, CUDNN_TRY and CUBLAS_TRY.
 *
 * Each macro runs one host API call; on failure it fills the enclosing function's `vitd_err *err` with
 * VITD_E_GPU and a message "<file>:<line>: <error string>: <call text>" (cuDNN adds cudnnGetLastErrorString,
 * which names the attribute or engine that refused), stores the code in the enclosing `vitd_status st`, and jumps
 * to the function's `fail:` label. So a function that uses them declares, in this order of appearance:
 *
 *     vitd_status st = VITD_OK;      // the result
 *     ...
 *     CUDA_TRY(cudaMallocAsync(&p, n, stream));
 *     ...
 *     return VITD_OK;
 * fail:
 *     // free what was taken, in reverse order
 *     return st;
 *
 * The message keeps the error string first: vitd_err holds 256 bytes, and the call text is the part to lose.
 * Host code only; kernels report through their launchers' cudaError_t.
 */
#ifndef VITD_GPU_COMMON_H
#define VITD_GPU_COMMON_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "vitd.h"

#ifdef __FILE_NAME__
#define GPU_FILE_ __FILE_NAME__
#else
#define GPU_FILE_ __FILE__
#endif

#define CUDA_TRY(call)                                                                                      \
    do {                                                                                                    \
        cudaError_t e_ = (call);                                                                            \
        if (e_ != cudaSuccess) {                                                                            \
            st = vitd_fail(err, VITD_E_GPU, "%s:%d: %s: %s", GPU_FILE_, __LINE__, cudaGetErrorString(e_),   \
                           #call);                                                                          \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

/* cudnnGetLastErrorString returns the most recent cuDNN diagnostic of this thread (may be empty). */
#define CUDNN_TRY(call)                                                                                     \
    do {                                                                                                    \
        cudnnStatus_t s_ = (call);                                                                          \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                                   \
            char last_[160];                                                                                \
            last_[0] = 0;                                                                                   \
            cudnnGetLastErrorString(last_, sizeof last_);                                                   \
            st = vitd_fail(err, VITD_E_GPU, "%s:%d: %s [%s]: %s", GPU_FILE_, __LINE__,                      \
                           cudnnGetErrorString(s_), last_, #call);                                          \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

#define CUBLAS_TRY(call)                                                                                    \
    do {                                                                                                    \
        cublasStatus_t s_ = (call);                                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                  \
            st = vitd_fail(err, VITD_E_GPU, "%s:%d: %s: %s", GPU_FILE_, __LINE__,                             \
                           cublasLtGetStatusName(s_), #call);                                               \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

#endif
