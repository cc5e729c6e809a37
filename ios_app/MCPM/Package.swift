// swift-tools-version:5.9
// The MCPM Swift package: a thin Swift layer over the mcpm C runtime.
//
// As committed in ios_app/MCPM it is a template: `mcpm-export MODEL --target ios -o OUT` copies it to OUT/MCPM and
// adds what it needs to build:
//   Sources/CMCPM/*.c, *.h, include/mcpm.h   the C runtime (copies of runtime_bindings/c, the same files as
//                                            every other platform)
//   Sources/CMCPM/mcpm_kernel_table.c        generated: every kernel of the bundle, looked up by the runtime
//   MCPMKernels.xcframework                  the bundle's kernels: ios-arm64 and ios-arm64_x86_64-simulator
// The kernels must match the bundle the app loads (same export).
import PackageDescription

let package = Package(
    name: "MCPM",
    platforms: [.iOS(.v14)],  // the kernels are built for iOS 14.0 (device and simulator); no macOS slice yet
    products: [
        .library(name: "MCPM", targets: ["MCPM"]),
    ],
    targets: [
        // The bundle's CPU kernels (static libraries; symbols ___tvm_ffi_<variant>_<kernel>).
        .binaryTarget(name: "MCPMKernels", path: "MCPMKernels.xcframework"),
        // The C runtime + the generated kernel table. Parallel kernels run on the runtime's pthread pool.
        .target(
            name: "CMCPM",
            dependencies: ["MCPMKernels"],
            path: "Sources/CMCPM",
            publicHeadersPath: "include",
            linkerSettings: [
                .linkedLibrary("m"),
            ]
        ),
        .target(
            name: "MCPM",
            dependencies: ["CMCPM"],
            path: "Sources/MCPM"
        ),
    ],
    cLanguageStandard: .c11  // no unsafeFlags: the package stays usable as a dependency
)
