import CMCPM
import Foundation

/// Where the kernels run (mcpm_params.device).
///
/// METAL HOOK (wired): `.gpu` and `.auto` need the Metal dispatcher (mcpm_metal.m), which `mcpm-export --target ios
/// --device gpu` puts into the package together with the bundle's Metal kernels (kernels.metal) and the `MCPM_METAL`
/// compilation condition. Without it (a CPU export) only `.cpu` is available: the demo app disables the others and
/// `MCPMModel` throws `MCPMError.notAvailable`. `.gpu` fails the load when the bundle has no GPU kernels or Metal does
/// not work; `.auto` then runs on the CPU and says why in `MCPMModel.loadNotice`.
public enum MCPMDevice: String, CaseIterable, Codable, Sendable {
    case cpu
    case gpu
    case auto

    /// This build can run it (GPU: the package was exported with --device gpu).
    public var isAvailable: Bool {
        #if MCPM_METAL
        return true
        #else
        return self == .cpu
        #endif
    }

    /// Available, and the bundle at bundleURL has GPU kernels (its plan.json has a "gpu" section) where needed.
    public func isAvailable(for bundleURL: URL) -> Bool {
        isAvailable && (self == .cpu || MCPMDevice.bundleHasGPUKernels(bundleURL))
    }

    /// plan.json of the bundle has a "gpu" section (exported with --device gpu).
    public static func bundleHasGPUKernels(_ bundleURL: URL) -> Bool {
        let url = bundleURL.appendingPathComponent("plan.json")
        guard let data = try? Data(contentsOf: url),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return false }
        return object["gpu"] is [String: Any]
    }
}

/// Settings for loading a model (mcpm_params).
public struct MCPMModelSettings: Codable, Equatable, Sendable {
    /// Worker threads including the caller; 0 = the performance cores of this device.
    public var threads: Int
    /// nil = the best kernel variant this CPU supports ("i8mm" on A15+, "dotprod" on A13/A14, "neon" before).
    public var kernelVariant: String?
    /// Check weights.bin's CRC-32 on load (reads the whole file).
    public var verify: Bool
    public var device: MCPMDevice

    public init(threads: Int = 0, kernelVariant: String? = nil, verify: Bool = false, device: MCPMDevice = .cpu) {
        self.threads = threads
        self.kernelVariant = kernelVariant
        self.verify = verify
        self.device = device
    }

    /// Performance cores (hw.perflevel0.physicalcpu), else all active cores.
    public static var performanceCores: Int {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        if sysctlbyname("hw.perflevel0.physicalcpu", &value, &size, nil, 0) == 0, value > 0 {
            return Int(value)
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    var resolvedThreads: Int { threads > 0 ? threads : MCPMModelSettings.performanceCores }
}

/// Sampler settings (mcpm_sampling). Order per token: repetition penalty, temperature, top-k, top-p, min-p.
public struct MCPMSampling: Codable, Equatable, Sendable {
    /// <= 0: greedy.
    public var temperature: Float
    /// 0 = off.
    public var topK: Int
    /// 1 = off.
    public var topP: Float
    /// 0 = off.
    public var minP: Float
    /// 1 = off.
    public var repetitionPenalty: Float
    /// 0 = off, -1 = all tokens.
    public var repeatLastN: Int
    /// Same seed, same tokens.
    public var seed: UInt64

    public init(temperature: Float = 0.7, topK: Int = 40, topP: Float = 0.95, minP: Float = 0,
                repetitionPenalty: Float = 1, repeatLastN: Int = 64, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.repeatLastN = repeatLastN
        self.seed = seed
    }

    /// Argmax, no penalty: the same text as `mcpm generate` on a computer with the same bundle.
    public static let greedy = MCPMSampling(temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1,
                                            repeatLastN: 0, seed: 0)

    var cValue: mcpm_sampling {
        var s = mcpm_default_sampling()
        s.temperature = temperature
        s.top_k = Int32(clamping: topK)
        s.top_p = topP
        s.min_p = minP
        s.repetition_penalty = repetitionPenalty
        s.repeat_last_n = Int32(clamping: repeatLastN)
        s.seed = seed
        return s
    }
}
