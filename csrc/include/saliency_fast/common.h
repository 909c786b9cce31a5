// Shared by the CPU and CUDA code: the HOST_DEVICE marker for math that both devices run.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HOST_DEVICE inline
#endif
