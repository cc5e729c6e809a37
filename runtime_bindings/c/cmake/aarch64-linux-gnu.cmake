# Cross build for ARM64 Linux with Debian's cross gcc (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross);
# run the programs with qemu-aarch64 -L /usr/aarch64-linux-gnu. Bundles: mcpm-export --target linux-arm64 (or the
# bundle/ folder of --target android: the same kernel objects).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
