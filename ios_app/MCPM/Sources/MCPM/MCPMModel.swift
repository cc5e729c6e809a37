import CMCPM
import Foundation

/// A loaded bundle (mcpm_model): plan.json, the mmapped weights.bin and the kernels linked into the app.
///
/// The C runtime allows one thread at a time per model: every call on the model and on its sessions runs on the
/// model's serial `queue`. Load with `MCPMModel.load(...)` (off the main thread: a large bundle takes seconds).
public final class MCPMModel: @unchecked Sendable {
    let handle: OpaquePointer
    /// Every C call on this model (and its sessions) runs here.
    let queue: DispatchQueue
    public let bundleURL: URL
    public let settings: MCPMModelSettings
    public let vocabSize: Int
    public let contextLength: Int
    /// bos_token_id of the bundle's mcpm-config.json (the benchmark's first prompt token), nil if none.
    public let bosTokenID: Int32?
    /// Where the model runs: "cpu" or "gpu" (mcpm_model_device).
    public let runningDevice: String
    /// Why a model loaded with device .auto runs on the CPU, "" otherwise (mcpm_model_notice).
    public let loadNotice: String
    /// True for a MiniCPM-V bundle: it has a vision encoder, MCPMSession.encodeImage works (mcpm_model_has_vision).
    public let hasVision: Bool

    /// Loads the bundle folder at bundleURL (it holds mcpm-config.json, plan.json, weights.bin, the tokenizer).
    /// Blocks: prefer `load(bundleURL:settings:)`.
    public init(bundleURL: URL, settings: MCPMModelSettings = MCPMModelSettings()) throws {
        guard settings.device.isAvailable else {
            throw MCPMError.notAvailable("This app has no GPU (Metal) dispatcher: export the model with "
                                         + "`mcpm-export --target ios --device gpu`, or use the CPU.")
        }
        guard MCPMModel.linkedKernelCount > 0 else {
            throw MCPMError.loadFailed("No kernels are linked into this app: build it from an `mcpm-export --target ios` output.")
        }
        var params = mcpm_default_params()
        params.threads = Int32(clamping: settings.resolvedThreads)
        params.verify = settings.verify ? 1 : 0
        let dir = bundleURL.path
        let variant = settings.kernelVariant ?? ""
        let loaded: OpaquePointer? = dir.withCString { cDir in
            settings.device.rawValue.withCString { cDevice in
                variant.withCString { cVariant in
                    params.device = cDevice  // "cpu", "gpu" or "auto"
                    params.kernel_variant = variant.isEmpty ? nil : cVariant
                    return mcpm_model_load(cDir, &params)
                }
            }
        }
        guard let model = loaded else {
            throw MCPMError.loadFailed(String(cString: mcpm_last_error(nil)))
        }
        handle = model
        queue = DispatchQueue(label: "mcpm.model", qos: .userInitiated)
        self.bundleURL = bundleURL
        self.settings = settings
        vocabSize = Int(mcpm_vocab_size(model))
        contextLength = Int(mcpm_context_length(model))
        bosTokenID = MCPMModel.readBOS(bundleURL)
        runningDevice = String(cString: mcpm_model_device(model))
        loadNotice = String(cString: mcpm_model_notice(model))
        hasVision = mcpm_model_has_vision(model) == 1
    }

    /// Kernel entries linked into the app (every variant; mcpm_kernel_table.c of the export). Calling it also makes
    /// the linker keep that table, which is how the runtime finds the kernels on iOS.
    public static var linkedKernelCount: Int { Int(mcpm_kernel_table_count()) }

    /// Loads on a background queue.
    public static func load(bundleURL: URL, settings: MCPMModelSettings = MCPMModelSettings()) async throws
        -> MCPMModel {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(with: Result { try MCPMModel(bundleURL: bundleURL, settings: settings) })
            }
        }
    }

    deinit {
        mcpm_model_free(handle)  // sessions hold the model: they are gone by now
    }

    /// The runtime's statistics of the load and of the last generation (mcpm_stats_json).
    public func stats() throws -> MCPMStats {
        try MCPMStats.decode(statsJSON())
    }

    /// stats() for the main actor: waits on the model's queue without blocking the caller (a prefill still
    /// running after Stop would freeze the UI in a queue.sync).
    public func currentStats() async throws -> MCPMStats {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: Result { try MCPMStats.decode(try self.statsJSONOnQueue()) })
            }
        }
    }

    /// The bundle's CPU kernel sets in preference order and whether this CPU runs each (mcpm_kernel_variants_json);
    /// empty for a bundle with one set.
    public func kernelVariants() -> [(name: String, supported: Bool)] {
        let json: String = queue.sync {
            var buffer = [CChar](repeating: 0, count: 4096)
            return mcpm_kernel_variants_json(handle, &buffer, buffer.count) == 0 ? String(cString: buffer) : "[]"
        }
        let list = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [[String: Any]] ?? []
        return list.compactMap { item in
            guard let name = item["name"] as? String else { return nil }
            return (name, item["supported"] as? Bool ?? false)
        }
    }

    /// mcpm_stats_json as it comes.
    public func statsJSON() throws -> String {
        try queue.sync { try statsJSONOnQueue() }
    }

    func statsJSONOnQueue() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(MCPM_STATS_JSON_MAX))  // always enough (mcpm.h)
        let rc = buffer.withUnsafeMutableBufferPointer { buf in
            mcpm_stats_json(handle, buf.baseAddress, buf.count)
        }
        guard rc == 0 else { throw MCPMError.statsUnavailable(lastErrorOnQueue()) }
        return String(cString: buffer)
    }

    func lastErrorOnQueue() -> String {
        String(cString: mcpm_last_error(handle))
    }

    private static func readBOS(_ bundleURL: URL) -> Int32? {
        let url = bundleURL.appendingPathComponent("mcpm-config.json")
        guard let data = try? Data(contentsOf: url),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let bos = object["bos_token_id"] as? Int else { return nil }
        return Int32(clamping: bos)
    }

    /// The earlier name of hasVision.
    public var acceptsImages: Bool { hasVision }
}
