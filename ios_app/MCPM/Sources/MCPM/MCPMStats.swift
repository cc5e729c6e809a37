import Foundation

/// The runtime's statistics (mcpm_stats_json) of the last generation and of the load.
public struct MCPMStats: Codable, Equatable, Sendable {
    public var loadMs: Double
    public var prefillTokens: Int
    public var prefillTokensPerSecond: Double
    public var decodeTokens: Int
    public var decodeTokensPerSecond: Double
    public var timeToFirstTokenMs: Double
    /// getrusage's ru_maxrss as the runtime reports it (Linux: kilobytes; Darwin's ru_maxrss is in bytes).
    public var peakRSS: Int
    public var threads: Int
    public var kernelVariant: String
    /// Written by newer runtimes (GPU backend): where the model runs, and why "auto" stayed on the CPU.
    public var device: String?
    public var gpuDevice: String?
    public var gpuProgram: String?
    public var notice: String?
    /// Written by runtimes with image input: wall time, vision-encoder runs (overview + slices) and patches of the
    /// last mcpm_encode_image (0 before one), apart from prefill and decode.
    public var imageEncodeMs: Double?
    public var imageSlices: Int?
    public var imagePatches: Int?
    /// Written by runtimes with a float16 KV cache option: the cache's dtype, its bytes at full context (pages
    /// cost memory once written) and per token.
    public var kvDtype: String?
    public var kvBytes: Int?
    public var kvBytesPerToken: Int?

    enum CodingKeys: String, CodingKey {
        case loadMs = "load_ms"
        case prefillTokens = "prefill_tokens"
        case prefillTokensPerSecond = "prefill_tok_s"
        case decodeTokens = "decode_tokens"
        case decodeTokensPerSecond = "decode_tok_s"
        case timeToFirstTokenMs = "ttft_ms"
        case peakRSS = "peak_rss_kb"
        case threads
        case kernelVariant = "kernel_variant"
        case device
        case gpuDevice = "gpu_device"
        case gpuProgram = "gpu_program"
        case notice
        case imageEncodeMs = "image_encode_ms"
        case imageSlices = "image_slices"
        case imagePatches = "image_patches"
        case kvDtype = "kv_dtype"
        case kvBytes = "kv_bytes"
        case kvBytesPerToken = "kv_bytes_per_token"
    }

    /// Decodes the JSON object of mcpm_stats_json.
    public static func decode(_ json: String) throws -> MCPMStats {
        do {
            return try JSONDecoder().decode(MCPMStats.self, from: Data(json.utf8))
        } catch {
            throw MCPMError.statsUnavailable("cannot decode \(json): \(error)")
        }
    }
}

/// A benchmark run: the decoded stats and the runtime's JSON as it came (what to report).
public struct MCPMBenchmarkResult: Sendable {
    public var stats: MCPMStats
    public var json: String
}
