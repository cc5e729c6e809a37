import MCPM
import PhotosUI
import SwiftUI
import UniformTypeIdentifiers

struct ChatView: View {
    @EnvironmentObject private var store: ModelStore
    @EnvironmentObject private var chat: ChatViewModel
    @ObservedObject private var settings = AppSettings.shared
    @State private var input = ""
    @State private var showImporter = false
    @State private var photo: PhotosPickerItem?

    var body: some View {
        NavigationStack {
            VStack(spacing: 0) {
                modelBar
                ScrollViewReader { proxy in
                    List(chat.messages) { message in
                        MessageRow(message: message).id(message.id)
                    }
                    .listStyle(.plain)
                    .onChange(of: chat.messages.last?.text) { _ in
                        if let last = chat.messages.last { proxy.scrollTo(last.id, anchor: .bottom) }
                    }
                }
                if let stats = chat.lastStats {
                    Text(String(format: "prefill %.1f tok/s · decode %.1f tok/s · first token %.0f ms",
                                stats.prefillTokensPerSecond, stats.decodeTokensPerSecond, stats.timeToFirstTokenMs))
                        .font(.caption).foregroundColor(.secondary).padding(.vertical, 2)
                }
                inputBar
            }
            .navigationTitle("mcpm")
            .navigationBarTitleDisplayMode(.inline)
            .toolbar {
                Button("New chat") { chat.newConversation() }.disabled(chat.session == nil)
            }
            .fileImporter(isPresented: $showImporter, allowedContentTypes: [.folder]) { result in
                if case .success(let url) = result { store.importFolder(url) }
            }
            .task(id: store.selected) { await loadSelected() }
        }
    }

    private var modelBar: some View {
        VStack(alignment: .leading, spacing: 4) {
            HStack {
                Picker("Model", selection: $store.selected) {
                    ForEach(store.models) { m in
                        Text(m.bundled ? m.name : "\(m.name) (Files)").tag(Optional(m))
                    }
                }
                .pickerStyle(.menu)
                Spacer()
                Button { showImporter = true } label: { Label("Import", systemImage: "folder.badge.plus") }
            }
            Text(chat.isLoading ? "Loading…" : chat.status).font(.caption).foregroundColor(.secondary)
            if let err = store.importError { Text(err).font(.caption).foregroundColor(.red) }
        }
        .padding(.horizontal).padding(.vertical, 6)
    }

    private var inputBar: some View {
        HStack {
            // Image input for MiniCPM-V bundles: NOT WIRED (MCPMSession.attachImage always throws). The picker
            // shows only for bundles that accept images, which none does yet.
            if chat.model?.acceptsImages == true {
                PhotosPicker(selection: $photo, matching: .images) { Image(systemName: "photo") }
            }
            TextField("Message", text: $input, axis: .vertical)
                .textFieldStyle(.roundedBorder)
                .lineLimit(1 ... 5)
                .disabled(chat.session == nil)
            if chat.isGenerating {
                Button("Stop") { chat.stop() }.buttonStyle(.borderedProminent).tint(.red)
            } else {
                Button("Send") {
                    let text = input.trimmingCharacters(in: .whitespacesAndNewlines)
                    input = ""
                    chat.send(text, settings: settings)
                }
                .buttonStyle(.borderedProminent)
                .disabled(chat.session == nil || input.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            }
        }
        .padding()
    }

    @MainActor
    private func loadSelected() async {
        guard let entry = store.selected else { return }
        await chat.load(entry, settings: settings.modelSettings)
    }
}

private struct MessageRow: View {
    let message: ChatMessage

    var body: some View {
        switch message.role {
        case .user:
            Text(message.text).bold().frame(maxWidth: .infinity, alignment: .trailing)
        case .assistant:
            Text(message.text.isEmpty ? "…" : message.text).frame(maxWidth: .infinity, alignment: .leading)
        case .error:
            Text(message.text).foregroundColor(.red).font(.footnote)
        }
    }
}
