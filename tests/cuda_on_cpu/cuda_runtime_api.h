/*
 * cuda_runtime_api.h - CUDA on the CPU: the runtime's C functions, which cuda_runtime.h
 * declares (what C files of the project include, as they do CUDA's header of that name).
 */
#include "cuda_runtime.h"
