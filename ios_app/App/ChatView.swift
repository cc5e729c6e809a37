import MCPM
import PhotosUI
import SwiftUI
import UIKit
import UniformTypeIdentifiers

struct ChatView: View {
    @EnvironmentObject private var store: ModelStore
    @EnvironmentObject private var chat: ChatViewModel
    @ObservedObject private var settings = AppSettings.shared
    @State private var input = ""
    @State private var showImporter = false
    @State private var photo: PhotosPickerItem?
    @State private var showPhotoPicker = false
    @State private var showCamera = false

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
                if let encoding = chat.lastImage {
                    Text(encoding.summary).font(.caption).foregroundColor(.secondary)
                }
                if let image = chat.pendingImage {
                    attachedImage(image, thumbnail: chat.pendingThumbnail)
                }
                inputBar
            }
            .navigationTitle("mcpm")
            .navigationBarTitleDisplayMode(.inline)
            .toolbar {
                Button("New chat") { chat.newConversation() }.disabled(chat.session == nil || chat.isGenerating)
            }
            .fileImporter(isPresented: $showImporter, allowedContentTypes: [.folder]) { result in
                if case .success(let url) = result { Task { await store.importFolder(url) } }
            }
            .task(id: store.selected) { await loadSelected() }
            .photosPicker(isPresented: $showPhotoPicker, selection: $photo, matching: .images)
            .onChange(of: photo) { item in
                guard let item = item else { return }
                Task {
                    do {
                        if let data = try await item.loadTransferable(type: Data.self) {
                            await chat.attachImage(data: data)
                        }
                    } catch {
                        chat.messages.append(ChatMessage(role: .error, text: "Image not attached: \(error.localizedDescription)"))
                    }
                    photo = nil
                }
            }
            .sheet(isPresented: $showCamera) {
                CameraPicker { image in Task { await chat.attachImage(image) } }.ignoresSafeArea()
            }
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
                if store.isImporting {
                    ProgressView().padding(.trailing, 4)  // copying a model: the UI stays responsive
                }
                Button { showImporter = true } label: { Label("Import", systemImage: "folder.badge.plus") }
                    .disabled(store.isImporting)
            }
            Text(chat.isLoading ? "Loading…" : chat.status).font(.caption).foregroundColor(.secondary)
            if let err = store.importError { Text(err).font(.caption).foregroundColor(.red) }
        }
        .padding(.horizontal).padding(.vertical, 6)
    }

    private var inputBar: some View {
        HStack {
            // Image input: only for MiniCPM-V bundles (a vision encoder); the picture goes with the next message.
            if chat.model?.hasVision == true {
                Menu {
                    Button { showPhotoPicker = true } label: { Label("Photo library", systemImage: "photo") }
                    if UIImagePickerController.isSourceTypeAvailable(.camera) {
                        Button { showCamera = true } label: { Label("Camera", systemImage: "camera") }
                    }
                } label: {
                    Image(systemName: "photo.badge.plus")
                }
                .disabled(chat.isGenerating)
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

    /// The attached image's row: its thumbnail (never the full-size photo: decoding that here would freeze the UI).
    private func attachedImage(_ image: UIImage, thumbnail: UIImage?) -> some View {
        HStack {
            Group {
                if let thumbnail = thumbnail {
                    Image(uiImage: thumbnail).resizable().scaledToFill()
                } else {
                    ProgressView()
                }
            }
            .frame(width: 56, height: 56).clipped().cornerRadius(6)
            Text("\(Int(image.size.width * image.scale))x\(Int(image.size.height * image.scale)) · goes with your next message")
                .font(.caption).foregroundColor(.secondary)
            Spacer()
            Button("Remove") { chat.removeImage() }
        }
        .padding(.horizontal)
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

/// The camera (UIImagePickerController): the photo comes back as a UIImage (upright by its imageOrientation, which
/// MCPMSession.encodeImage applies).
private struct CameraPicker: UIViewControllerRepresentable {
    let onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker

        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage { parent.onImage(image) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}
