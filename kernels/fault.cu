/* fault.cu — a deliberate device fault, for testing how vitd survives a dead GPU (VITD_FAULT_INJECT, builds with
 * VITD_FAULT_INJECTION only).
 *
 * fault_illegal_write stores one int through a pointer no allocation owns. The launch succeeds; the kernel then
 * faults with cudaErrorIllegalAddress, a sticky error: the context is unusable and every later CUDA call on it
 * fails, as after an ECC error or a GPU that fell off the bus. Launch: one thread. Not a computation, so it has no
 * CPU twin; tests/test_gpu_fault.c checks what the server does after it.
 */
#include "engine_kernels.h"

__global__ void fault_kernel(int *p) { *p = 1; }

extern "C" cudaError_t fault_illegal_write(cudaStream_t stream) {
    fault_kernel<<<1, 1, 0, stream>>>((int *)(uintptr_t)0x10);
    return cudaGetLastError();
}
