import Foundation
import MCPM

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

    private(set) var model: MCPMModel?
    private(set) var session: MCPMSession?
    private var loadedKey: String?
    private var task: Task<Void, Never>?

    /// Loads entry with settings unless it is already loaded with them.
    func load(_ entry: ModelEntry, settings: MCPMModelSettings) async {
        let key = "\(entry.id)|\(settings.threads)|\(settings.device.rawValue)"
        if key == loadedKey, session != nil { return }
        stop()
        session = nil
        model = nil
        loadedKey = nil
        isLoading = true
        status = "Loading \(entry.name)…"
        do {
            let m = try await MCPMModel.load(bundleURL: entry.url, settings: settings)
            session = try MCPMSession(model: m)
            model = m
            loadedKey = key
            let stats = try? m.stats()
            status = "\(entry.name): \(stats?.kernelVariant ?? "?") kernels, \(stats?.threads ?? 0) threads"
        } catch {
            status = error.localizedDescription
            messages.append(ChatMessage(role: .error, text: error.localizedDescription))
        }
        isLoading = false
    }

    func send(_ text: String, settings: AppSettings) {
        guard let session = session, !isGenerating, !text.isEmpty else { return }
        messages.append(ChatMessage(role: .user, text: text))
        messages.append(ChatMessage(role: .assistant, text: ""))
        let index = messages.count - 1
        isGenerating = true
        let stream = session.generate(prompt: text, mode: .chat, maxNewTokens: settings.maxNewTokens,
                                      sampling: settings.sampling)
        task = Task { [weak self] in
            do {
                for try await piece in stream {
                    self?.messages[index].text += piece
                }
            } catch {
                self?.messages.append(ChatMessage(role: .error, text: error.localizedDescription))
            }
            self?.isGenerating = false
            self?.lastStats = try? self?.model?.stats()
        }
    }

    /// Stops the reply in progress (the text so far stays).
    func stop() {
        session?.cancel()
        task?.cancel()
    }

    func newConversation() {
        stop()
        session?.reset()
        messages.removeAll()
    }
}
