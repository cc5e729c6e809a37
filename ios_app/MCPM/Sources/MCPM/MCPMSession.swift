import CMCPM
import Foundation

/// A conversation over a model (mcpm_session): the bundle's tokenizer and chat template, the KV cache kept
/// between turns.
public final class MCPMSession: @unchecked Sendable {
    public enum Mode: String, Codable, Sendable {
        /// A chat turn: the user message in the chat template, the reply streamed.
        case chat
        /// Plain continuation of the prompt (a new conversation each time).
        case complete
    }

    public let model: MCPMModel
    let handle: OpaquePointer
    private let lock = NSLock()
    private var current: CancelFlag?

    /// Sampling and length used by `generate` when it is not given them.
    public var sampling = MCPMSampling()
    public var maxNewTokens = 256
    /// The most pixels an image is encoded at (the bundle's vision.max_pixels, mcpm_session_max_pixels): images
    /// are drawn at most this large before encoding. 0 for a bundle without a vision encoder.
    public let maxImagePixels: Int

    public init(model: MCPMModel) throws {
        self.model = model
        let created: OpaquePointer? = model.queue.sync { mcpm_session_new(model.handle) }
        guard let session = created else {
            throw MCPMError.sessionFailed(model.queue.sync { model.lastErrorOnQueue() })
        }
        handle = session
        maxImagePixels = Int(model.queue.sync { mcpm_session_max_pixels(session) })
    }

    deinit {
        let session = MCPMHandle(handle)
        let model = self.model
        model.queue.async {  // after any generation still queued; keeps the model alive until then
            mcpm_session_free(session.raw)
            withExtendedLifetime(model) {}
        }
    }

    /// Streams the reply to prompt piece by piece (UTF-8 never split). Ends when a stop token comes, after
    /// maxNewTokens, on `cancel()` or when the consumer stops iterating; throws MCPMError.generationFailed.
    public func generate(prompt: String, mode: Mode = .chat, maxNewTokens: Int? = nil,
                         sampling: MCPMSampling? = nil) -> AsyncThrowingStream<String, Error> {
        let flag = CancelFlag()
        lock.lock()
        current?.cancel()
        current = flag
        lock.unlock()
        let limit = Int32(clamping: maxNewTokens ?? self.maxNewTokens)
        let settings = sampling ?? self.sampling
        let model = self.model
        return AsyncThrowingStream { continuation in
            continuation.onTermination = { _ in flag.cancel() }
            model.queue.async {  // captures self (Sendable), not the C pointer: Swift 6 strict concurrency
                let session = self.handle
                var cSampling = settings.cValue
                let sink = TextSink(continuation: continuation, flag: flag)
                let user = Unmanaged.passRetained(sink).toOpaque()
                defer { Unmanaged<TextSink>.fromOpaque(user).release() }
                if flag.isCancelled {
                    continuation.finish()
                    return
                }
                // Stop also during a long prompt: the runtime asks the flag before every prefill chunk
                mcpm_set_abort_callback(model.handle, mcpmAbortFlag, Unmanaged.passUnretained(flag).toOpaque())
                defer { mcpm_set_abort_callback(model.handle, nil, nil) }
                let n: Int32 = prompt.withCString { cPrompt in
                    switch mode {
                    case .chat:
                        return mcpm_session_chat(session, cPrompt, limit, &cSampling, mcpmTextSink, user)
                    case .complete:
                        return mcpm_session_complete(session, cPrompt, limit, &cSampling, mcpmTextSink, user)
                    }
                }
                if n < 0 && !flag.isCancelled {
                    continuation.finish(throwing: MCPMError.generationFailed(String(cString: mcpm_session_last_error(session))))
                } else {  // a reply, or a Stop during the prompt (the message was not sent: nothing streamed)
                    continuation.finish()
                }
            }
        }
    }

    /// A new cancellable call (an image encode) becomes the one `cancel()` stops.
    func beginCancellable() -> CancelFlag {
        let flag = CancelFlag()
        lock.lock()
        current = flag
        lock.unlock()
        return flag
    }

    /// Stop: the generation in progress ends after the current token (its text so far stays in the conversation);
    /// a prompt or an image still being fed is dropped (the runtime's cancel points: each prefill chunk, each
    /// vision run).
    public func cancel() {
        lock.lock()
        current?.cancel()
        lock.unlock()
    }

    /// Forgets the conversation.
    public func reset() {
        model.queue.async { mcpm_session_reset(self.handle) }
    }

    /// The benchmark of the Android app, for comparable numbers: forgets the conversation, feeds a synthetic
    /// prompt of promptTokens ids (BOS, then a fixed xorshift32 sequence in [3, vocab)), decodes genTokens tokens
    /// greedily without stop ids, returns mcpm_stats_json, and forgets the conversation again.
    public func benchmark(promptTokens: Int = 128, genTokens: Int = 64) async throws -> MCPMBenchmarkResult {
        guard promptTokens >= 1, genTokens >= 0 else {
            throw MCPMError.invalidSettings("benchmark needs promptTokens >= 1 and genTokens >= 0")
        }
        let model = self.model
        let prompt = MCPMSession.syntheticPrompt(count: promptTokens, vocab: model.vocabSize, bos: model.bosTokenID)
        return try await withCheckedThrowingContinuation { continuation in
            model.queue.async {
                let session = self.handle
                mcpm_session_reset(session)
                defer { mcpm_session_reset(session) }
                let n = prompt.withUnsafeBufferPointer { p in
                    mcpm_generate(model.handle, p.baseAddress, Int32(clamping: p.count), Int32(clamping: genTokens),
                                  nil, nil, 0, nil, nil)
                }
                guard n >= 0 else {
                    continuation.resume(throwing: MCPMError.generationFailed(model.lastErrorOnQueue()))
                    return
                }
                continuation.resume(with: Result {
                    let json = try model.statsJSONOnQueue()
                    return MCPMBenchmarkResult(stats: try MCPMStats.decode(json), json: json)
                })
            }
        }
    }

    /// The bundle's golden check on this model (mcpm_self_test_json, docs/self-test.md): the JSON object with
    /// "pass", "reason", "kernel_variant", "device", "steps", "near_ties", "max_logit_diff", "tolerance",
    /// "tokenizer", "ms". Throws when it cannot run (a bundle exported without golden results: export it again).
    public func selfTest() async throws -> String {
        let model = self.model
        return try await withCheckedThrowingContinuation { continuation in
            model.queue.async {
                var buffer = [CChar](repeating: 0, count: Int(MCPM_SELF_TEST_JSON_MAX))
                let rc = mcpm_self_test_json(self.handle, &buffer, buffer.count)
                guard rc == 0 else {
                    continuation.resume(throwing: MCPMError.generationFailed(model.lastErrorOnQueue()))
                    return
                }
                continuation.resume(returning: String(cString: buffer))
            }
        }
    }

    static func syntheticPrompt(count: Int, vocab: Int, bos: Int32?) -> [Int32] {
        var x: UInt32 = 0x9E37_79B9
        var out = [Int32]()
        out.reserveCapacity(count)
        for _ in 0 ..< count {
            x ^= x << 13
            x ^= x >> 17
            x ^= x << 5
            out.append(vocab > 3 ? Int32(3 + x % UInt32(vocab - 3)) : Int32(x % UInt32(max(vocab, 1))))
        }
        if let bos = bos, bos >= 0, !out.isEmpty { out[0] = bos }
        return out
    }
}

/// A cancel flag shared by the stream, `cancel()` and the C callback.
final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false

    var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }

    func cancel() {
        lock.lock()
        cancelled = true
        lock.unlock()
    }
}

/// What the C callback gets as `user`.
final class TextSink {
    let continuation: AsyncThrowingStream<String, Error>.Continuation
    let flag: CancelFlag

    init(continuation: AsyncThrowingStream<String, Error>.Continuation, flag: CancelFlag) {
        self.continuation = continuation
        self.flag = flag
    }
}

/// A C handle sent to the model's queue where no Sendable owner can go along (deinit). OpaquePointer is not
/// Sendable; the queue runs every call on the model one at a time, so handing the pointer to it is safe.
struct MCPMHandle: @unchecked Sendable {
    let raw: OpaquePointer

    init(_ raw: OpaquePointer) { self.raw = raw }
}

// The C callbacks are global functions, not global closure constants: Swift 6 refuses global variables of
// non-Sendable type, and a global function converts to a C function pointer as it is.

/// mcpm_abort_callback: nonzero once the call's CancelFlag is set (user: an unretained CancelFlag).
func mcpmAbortFlag(_ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let user = user else { return 0 }
    return Unmanaged<CancelFlag>.fromOpaque(user).takeUnretainedValue().isCancelled ? 1 : 0
}

/// mcpm_text_callback: yields each piece; a nonzero return cancels the generation.
private func mcpmTextSink(_ text: UnsafePointer<CChar>?, _ len: Int, _ user: UnsafeMutableRawPointer?) -> Int32 {
    guard let user = user else { return 1 }
    let sink = Unmanaged<TextSink>.fromOpaque(user).takeUnretainedValue()
    if let text = text, len > 0 {
        sink.continuation.yield(String(decoding: UnsafeRawBufferPointer(start: text, count: len), as: UTF8.self))
    }
    return sink.flag.isCancelled ? 1 : 0
}
