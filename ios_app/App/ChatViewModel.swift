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
    @Published var lastImage: MCPMImageEncoding?

    private(set) var model: MCPMModel?
    private(set) var session: MCPMSession?
    private var loadedKey: String?
    private var task: Task<Void, Never>?
    /// Bumped by every load: a load that finishes after a newer one started drops its model (the picker's choice
    /// is the one that runs).
    private var loadSerial = 0

    /// Loads entry with settings unless it is already loaded with them.
    func load(_ entry: ModelEntry, settings: MCPMModelSettings) async {
        let key = "\(entry.id)|\(settings.threads)|\(settings.device.rawValue)"
        if key == loadedKey, session != nil { return }
        loadSerial += 1
        let serial = loadSerial
        stop()
        session = nil
        model = nil
        loadedKey = nil
        pendingImage = nil
        lastImage = nil
        isLoading = true
        status = "Loading \(entry.name)…"
        do {
            let m = try await MCPMModel.load(bundleURL: entry.url, settings: settings)
            guard serial == loadSerial else { return }  // another model was picked meanwhile: that load wins
            session = try MCPMSession(model: m)
            model = m
            loadedKey = key
            let stats = try? await m.currentStats()
            status = "\(entry.name): \(stats?.kernelVariant ?? "?") kernels, \(stats?.threads ?? 0) threads"
                + (m.hasVision ? ", takes images" : "")
        } catch {
            guard serial == loadSerial else { return }
            status = error.localizedDescription
            messages.append(ChatMessage(role: .error, text: error.localizedDescription))
        }
        isLoading = false
    }

    /// Attaches picked image data (PhotosPicker) to the next message; an unreadable file is shown as an error.
    func attachImage(data: Data) {
        guard let image = UIImage(data: data) else {
            messages.append(ChatMessage(role: .error, text: "Image not attached: the picked file is not an image iOS can read."))
            return
        }
        attachImage(image)
    }

    /// Attaches an image (the camera's photo) to the next message.
    func attachImage(_ image: UIImage) {
        guard model?.hasVision == true else {
            messages.append(ChatMessage(role: .error, text: "Image not attached: this model has no vision encoder (a MiniCPM-V model takes images)."))
            return
        }
        pendingImage = image
    }

    func removeImage() {
        pendingImage = nil
    }

    func send(_ text: String, settings: AppSettings) {
        guard let session = session, !isGenerating, !text.isEmpty else { return }
        let image = pendingImage
        pendingImage = nil
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

    func newConversation() {
        stop()
        session?.reset()  // also drops images attached to the next turn
        messages.removeAll()
        pendingImage = nil
        lastImage = nil
    }
}
