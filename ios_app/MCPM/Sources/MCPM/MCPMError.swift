import Foundation

/// Errors of the MCPM package. The runtime's messages are one line and say what to do (e.g. "…/weights.bin is
/// missing: re-export the bundle"); they are passed through unchanged.
public enum MCPMError: Error, LocalizedError, Equatable, Sendable {
    /// mcpm_model_load returned NULL (missing or corrupt bundle, kernels of another export, out of memory).
    case loadFailed(String)
    /// mcpm_session_new returned NULL (bad mcpm-config.json or tokenizer).
    case sessionFailed(String)
    /// mcpm_session_chat / mcpm_session_complete / mcpm_generate returned -1 (e.g. the conversation is full).
    case generationFailed(String)
    /// mcpm_stats_json failed or gave JSON that does not decode.
    case statsUnavailable(String)
    /// A setting out of range (threads, token counts).
    case invalidSettings(String)
    /// mcpm_encode_image returned -1 (no vision encoder in the bundle, an empty or too elongated image), or the
    /// image could not be drawn into RGB pixels.
    case imageFailed(String)
    /// Not in this build: the GPU (Metal) backend in an app exported for the CPU.
    case notAvailable(String)

    public var errorDescription: String? {
        switch self {
        case .loadFailed(let m): return "Loading the model failed: \(m)"
        case .sessionFailed(let m): return "Opening a session failed: \(m)"
        case .generationFailed(let m): return "Generation failed: \(m)"
        case .statsUnavailable(let m): return "No statistics: \(m)"
        case .invalidSettings(let m): return "Invalid settings: \(m)"
        case .imageFailed(let m): return "Image not attached: \(m)"
        case .notAvailable(let m): return m
        }
    }
}
