/* The few OpenCL 1.2 types, constants and entry points the mcpm OpenCL dispatcher uses (mcpm_opencl.c), declared
 * here under our own MCL_/mcl_ names with the values and signatures of the Khronos headers, so that the runtime
 * neither includes <CL/cl.h> nor links libOpenCL: the library is dlopen'ed at run time and every entry point is
 * resolved with dlsym. tests/test_opencl_runtime.py compiles this header next to <CL/cl.h> and checks each value. */
#ifndef MCPM_CL_H
#define MCPM_CL_H

#include <stddef.h>
#include <stdint.h>

typedef int32_t mcl_int;
typedef uint32_t mcl_uint;
typedef int64_t mcl_long;
typedef uint64_t mcl_ulong;
typedef float mcl_float;
typedef mcl_uint mcl_bool;
typedef mcl_ulong mcl_bitfield;
typedef mcl_bitfield mcl_device_type;
typedef mcl_bitfield mcl_mem_flags;
typedef mcl_bitfield mcl_command_queue_properties;
typedef intptr_t mcl_context_properties;
typedef mcl_uint mcl_platform_info;
typedef mcl_uint mcl_device_info;
typedef mcl_uint mcl_program_info;
typedef mcl_uint mcl_program_build_info;
typedef mcl_uint mcl_kernel_work_group_info;
typedef mcl_uint mcl_profiling_info;
typedef mcl_uint mcl_buffer_create_type;

typedef struct _cl_platform_id* mcl_platform_id;
typedef struct _cl_device_id* mcl_device_id;
typedef struct _cl_context* mcl_context;
typedef struct _cl_command_queue* mcl_command_queue;
typedef struct _cl_mem* mcl_mem;
typedef struct _cl_program* mcl_program;
typedef struct _cl_kernel* mcl_kernel;
typedef struct _cl_event* mcl_event;

typedef struct {
    size_t origin;
    size_t size;
} mcl_buffer_region;

/* error codes */
#define MCL_SUCCESS 0
#define MCL_DEVICE_NOT_FOUND -1
#define MCL_DEVICE_NOT_AVAILABLE -2
#define MCL_COMPILER_NOT_AVAILABLE -3
#define MCL_MEM_OBJECT_ALLOCATION_FAILURE -4
#define MCL_OUT_OF_RESOURCES -5
#define MCL_OUT_OF_HOST_MEMORY -6
#define MCL_BUILD_PROGRAM_FAILURE -11
#define MCL_MISALIGNED_SUB_BUFFER_OFFSET -13
#define MCL_INVALID_VALUE -30
#define MCL_INVALID_BINARY -42
#define MCL_INVALID_KERNEL_NAME -46
#define MCL_INVALID_ARG_SIZE -51
#define MCL_INVALID_WORK_GROUP_SIZE -54
#define MCL_INVALID_GLOBAL_WORK_SIZE -63
#define MCL_INVALID_BUFFER_SIZE -61
#define MCL_PLATFORM_NOT_FOUND_KHR -1001

#define MCL_FALSE 0
#define MCL_TRUE 1

/* device types */
#define MCL_DEVICE_TYPE_CPU (1 << 1)
#define MCL_DEVICE_TYPE_GPU (1 << 2)
#define MCL_DEVICE_TYPE_ALL 0xFFFFFFFF

/* platform / device info */
#define MCL_PLATFORM_VERSION 0x0901
#define MCL_PLATFORM_NAME 0x0902
#define MCL_DEVICE_TYPE 0x1000
#define MCL_DEVICE_MAX_WORK_GROUP_SIZE 0x1004
#define MCL_DEVICE_MAX_MEM_ALLOC_SIZE 0x1010
#define MCL_DEVICE_MEM_BASE_ADDR_ALIGN 0x1019
#define MCL_DEVICE_GLOBAL_MEM_SIZE 0x101F
#define MCL_DEVICE_NAME 0x102B
#define MCL_DRIVER_VERSION 0x102D
#define MCL_DEVICE_VERSION 0x102F

/* memory */
#define MCL_MEM_READ_WRITE (1 << 0)
#define MCL_MEM_READ_ONLY (1 << 2)
#define MCL_MEM_COPY_HOST_PTR (1 << 5)
#define MCL_BUFFER_CREATE_TYPE_REGION 0x1220

/* queue */
#define MCL_QUEUE_PROFILING_ENABLE (1 << 1)

/* program */
#define MCL_PROGRAM_BINARY_SIZES 0x1165
#define MCL_PROGRAM_BINARIES 0x1166
#define MCL_PROGRAM_BUILD_LOG 0x1183

/* kernel */
#define MCL_KERNEL_WORK_GROUP_SIZE 0x11B0

/* profiling */
#define MCL_PROFILING_COMMAND_START 0x1282
#define MCL_PROFILING_COMMAND_END 0x1283

/* entry points (OpenCL 1.2 signatures; calling convention: the platform default, as CL_API_CALL on Linux/Android) */
typedef mcl_int (*mcl_GetPlatformIDs_fn)(mcl_uint, mcl_platform_id*, mcl_uint*);
typedef mcl_int (*mcl_GetPlatformInfo_fn)(mcl_platform_id, mcl_platform_info, size_t, void*, size_t*);
typedef mcl_int (*mcl_GetDeviceIDs_fn)(mcl_platform_id, mcl_device_type, mcl_uint, mcl_device_id*, mcl_uint*);
typedef mcl_int (*mcl_GetDeviceInfo_fn)(mcl_device_id, mcl_device_info, size_t, void*, size_t*);
typedef mcl_context (*mcl_CreateContext_fn)(const mcl_context_properties*, mcl_uint, const mcl_device_id*,
                                            void (*)(const char*, const void*, size_t, void*), void*, mcl_int*);
typedef mcl_command_queue (*mcl_CreateCommandQueue_fn)(mcl_context, mcl_device_id, mcl_command_queue_properties,
                                                       mcl_int*);
typedef mcl_mem (*mcl_CreateBuffer_fn)(mcl_context, mcl_mem_flags, size_t, void*, mcl_int*);
typedef mcl_mem (*mcl_CreateSubBuffer_fn)(mcl_mem, mcl_mem_flags, mcl_buffer_create_type, const void*, mcl_int*);
typedef mcl_program (*mcl_CreateProgramWithSource_fn)(mcl_context, mcl_uint, const char**, const size_t*, mcl_int*);
typedef mcl_program (*mcl_CreateProgramWithBinary_fn)(mcl_context, mcl_uint, const mcl_device_id*, const size_t*,
                                                      const unsigned char**, mcl_int*, mcl_int*);
typedef mcl_int (*mcl_BuildProgram_fn)(mcl_program, mcl_uint, const mcl_device_id*, const char*,
                                       void (*)(mcl_program, void*), void*);
typedef mcl_int (*mcl_GetProgramInfo_fn)(mcl_program, mcl_program_info, size_t, void*, size_t*);
typedef mcl_int (*mcl_GetProgramBuildInfo_fn)(mcl_program, mcl_device_id, mcl_program_build_info, size_t, void*,
                                              size_t*);
typedef mcl_kernel (*mcl_CreateKernel_fn)(mcl_program, const char*, mcl_int*);
typedef mcl_int (*mcl_GetKernelWorkGroupInfo_fn)(mcl_kernel, mcl_device_id, mcl_kernel_work_group_info, size_t,
                                                 void*, size_t*);
typedef mcl_int (*mcl_SetKernelArg_fn)(mcl_kernel, mcl_uint, size_t, const void*);
typedef mcl_int (*mcl_EnqueueWriteBuffer_fn)(mcl_command_queue, mcl_mem, mcl_bool, size_t, size_t, const void*,
                                             mcl_uint, const mcl_event*, mcl_event*);
typedef mcl_int (*mcl_EnqueueReadBuffer_fn)(mcl_command_queue, mcl_mem, mcl_bool, size_t, size_t, void*, mcl_uint,
                                            const mcl_event*, mcl_event*);
typedef mcl_int (*mcl_EnqueueFillBuffer_fn)(mcl_command_queue, mcl_mem, const void*, size_t, size_t, size_t,
                                            mcl_uint, const mcl_event*, mcl_event*);
typedef mcl_int (*mcl_EnqueueNDRangeKernel_fn)(mcl_command_queue, mcl_kernel, mcl_uint, const size_t*,
                                               const size_t*, const size_t*, mcl_uint, const mcl_event*, mcl_event*);
typedef mcl_int (*mcl_Finish_fn)(mcl_command_queue);
typedef mcl_int (*mcl_GetEventProfilingInfo_fn)(mcl_event, mcl_profiling_info, size_t, void*, size_t*);
typedef mcl_int (*mcl_ReleaseEvent_fn)(mcl_event);
typedef mcl_int (*mcl_ReleaseKernel_fn)(mcl_kernel);
typedef mcl_int (*mcl_ReleaseProgram_fn)(mcl_program);
typedef mcl_int (*mcl_ReleaseMemObject_fn)(mcl_mem);
typedef mcl_int (*mcl_ReleaseCommandQueue_fn)(mcl_command_queue);
typedef mcl_int (*mcl_ReleaseContext_fn)(mcl_context);

#endif
