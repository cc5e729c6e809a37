import Foundation
import MCPM
import UIKit

struct ChatMessage: Identifiable {
    enum Role { case user, assistant, error }
    let id = UUID()
    var role: Role
    var text: String
}

/// The chat screen's state: the loaded model and session, the messages, the streaming task.
@MainActor
final class ChatViewModel: ObservableObject {
    @Published var messages: [ChatMessage] = []
    @Published var isLoading = false
    @Published var isGenerating = false
    @Published var status = "No model loaded"
    @Published var lastStats: MCPMStats?
    /// The image attached to the next message (MiniCPM-V models), and its last encoding (status line).
    @Published var pendingImage: UIImage?
    /// What the screen shows of pendingImage (a 168-pixel thumbnail).
    @Published var pendingThumbnail: UIImage?
    @Published var lastImage: MCPMImageEncoding?

    private(set) var model: MCPMModel?
    private(set) var session: MCPMSession?
    private var loadedKey: String?
    private var task: Task<Void, Never>?
    /// Bumped by every load: a load that finishes after a newer one started drops its model (the picker's choice
    /// is the one that runs).
    private var loadSerial = 0
    /// A benchmark runs alone: the chat's model is freed and nothing is loaded until resumeAfterBenchmark().
    private(set) var pausedForBenchmark: Bool

    /// pausedForBenchmark: true when the app was launched with -benchmark (the chat loads nothing meanwhile).
    init(pausedForBenchmark: Bool = false) {
        self.pausedForBenchmark = pausedForBenchmark
    }

    /// Loads entry with settings unless it is already loaded with them.
    func load(_ entry: ModelEntry, settings: MCPMModelSettings) async {
        let key = "\(entry.id)|\(settings.threads)|\(settings.device.rawValue)"
        if key == loadedKey, session != nil { return }
        guard !pausedForBenchmark else {
            status = "A benchmark is running: the chat loads \(entry.name) when it ends"
            return
        }
        let serial = unload()
        isLoading = true
        status = "Loading \(entry.name)…"
        do {
            let m = try await MCPMModel.load(bundleURL: entry.url, settings: settings)
            guard serial == loadSerial else { return }  // another model was picked meanwhile: that load wins
            session = try MCPMSession(model: m)
            model = m
            loadedKey = key
            let stats = try? await m.currentStats()
            let kv = stats?.kvBytes.map { String(format: ", KV cache %.1f MiB", Double($0) / 1_048_576) } ?? ""
            status = "\(entry.name): \(stats?.kernelVariant ?? "?") kernels, \(stats?.threads ?? 0) threads" + kv
                + (m.hasVision ? ", takes images" : "")
        } catch {
            guard serial == loadSerial else { return }
            status = error.localizedDescription
            messages.append(ChatMessage(role: .error, text: error.localizedDescription))
        }
        isLoading = false
    }

    /// Attaches picked image data (PhotosPicker) to the next message; an unreadable file is shown as an error.
    /// The data is opened off the main thread (a 48 MP HEIC takes a while).
    func attachImage(data: Data) async {
        let image = await Task.detached(priority: .userInitiated) { UIImage(data: data) }.value
        guard let image = image else {
            messages.append(ChatMessage(role: .error, text: "Image not attached: the picked file is not an image iOS can read."))
            return
        }
        await attachImage(image)
    }

    /// Attaches an image (the camera's photo) to the next message. The screen shows a small thumbnail made off the
    /// main thread (UIImage.byPreparingThumbnail), never the full-size photo; the full image is drawn at the
    /// model's size limit only when it is encoded, off the main thread too (MCPMSession.encodeImage).
    func attachImage(_ image: UIImage) async {
        guard model?.hasVision == true else {
            messages.append(ChatMessage(role: .error, text: "Image not attached: this model has no vision encoder (a MiniCPM-V model takes images)."))
            return
        }
        let side: CGFloat = 168  // 56 pt at 3x
        let longest = max(image.size.width, image.size.height, 1)
        let size = CGSize(width: max(1, image.size.width * side / longest), height: max(1, image.size.height * side / longest))
        let thumbnail = await image.byPreparingThumbnail(ofSize: size)
        pendingImage = image
        pendingThumbnail = thumbnail ?? image
    }

    func removeImage() {
        pendingImage = nil
        pendingThumbnail = nil
    }

    func send(_ text: String, settings: AppSettings) {
        guard let session = session, !isGenerating, !text.isEmpty else { return }
        let image = pendingImage
        removeImage()
        messages.append(ChatMessage(role: .user, text: image == nil ? text : "[image] " + text))
        let reply = ChatMessage(role: .assistant, text: "")
        messages.append(reply)
        isGenerating = true
        task = Task { [weak self] in
            if let image = image {
                // The vision encoder runs first (its time is reported apart from prefill/decode), then the turn.
                do {
                    let encoding = try await session.encodeImage(image)
                    self?.lastImage = encoding
                    self?.status = encoding.summary
                } catch {
                    self?.messages.append(ChatMessage(role: .error, text: error.localizedDescription))
                    self?.isGenerating = false
                    return
                }
            }
            let stream = session.generate(prompt: text, mode: .chat, maxNewTokens: settings.maxNewTokens,
                                          sampling: settings.sampling)
            do {
                for try await piece in stream {
                    // by id, not index: "New chat" may have emptied the list while the reply streams
                    guard let self = self, let i = self.messages.firstIndex(where: { $0.id == reply.id }) else { continue }
                    self.messages[i].text += piece
                }
            } catch {
                self?.messages.append(ChatMessage(role: .error, text: error.localizedDescription))
            }
            self?.isGenerating = false
            self?.lastStats = try? await self?.model?.currentStats()
        }
    }

    /// Stops the reply in progress (the text so far stays).
    func stop() {
        session?.cancel()
        task?.cancel()
    }

    /// Stops the reply and drops the session, the model and the attached image; returns the new load serial (a load
    /// still running drops its model when it ends).
    @discardableResult
    private func unload() -> Int {
        loadSerial += 1
        stop()
        session = nil
        model = nil
        loadedKey = nil
        removeImage()
        lastImage = nil
        return loadSerial
    }

    /// Frees the chat's model so that a benchmark runs alone (no second copy in memory, no reply competing for the
    /// cores): stops the reply, drops the session and the model (a load still running drops its model when it ends).
    func pauseForBenchmark() {
        pausedForBenchmark = true
        unload()
        isLoading = false
        status = "A benchmark is running: the chat waits until it ends"
    }

    /// The benchmark ended: the next load(...) loads the chat's model again.
    func resumeAfterBenchmark() {
        pausedForBenchmark = false
    }

    /// The app left the screen. iOS refuses GPU (Metal) work from a background app, so a reply running on the GPU
    /// is stopped (the text so far stays; Send continues the conversation); on the CPU it goes on as long as iOS
    /// lets the app run.
    func enteredBackground() {
        guard isGenerating, model?.runningDevice == "gpu" else { return }
        stop()
        messages.append(ChatMessage(role: .error, text: "Stopped: iOS does not let apps use the GPU in the background."))
    }

    func newConversation() {
        stop()
        session?.reset()  // also drops images attached to the next turn
        messages.removeAll()
        removeImage()
        lastImage = nil
    }
}
