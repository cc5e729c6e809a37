import Foundation
import SwiftUI

/// A model folder (a bundle: mcpm-config.json, plan.json, weights.bin, the tokenizer).
struct ModelEntry: Identifiable, Hashable {
    var name: String
    var url: URL
    var bundled: Bool
    var id: String { url.path }
}

/// Finds models: `Models/<name>/` in the app (put there by mcpm-export) and `Documents/Models/<name>/` (imported
/// with the Files app picker, or copied with Finder: the Documents folder is shared). The kernels linked into the
/// app must come from the same export as the bundle: the runtime refuses other bundles with a clear message.
@MainActor
final class ModelStore: ObservableObject {
    @Published private(set) var models: [ModelEntry] = []
    @Published var selected: ModelEntry?
    @Published var importError: String?

    static var documentsModels: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("Models")
    }

    init() { refresh() }

    func refresh() {
        var found: [ModelEntry] = []
        if let resources = Bundle.main.resourceURL {
            found += Self.scan(resources.appendingPathComponent("Models"), bundled: true)
        }
        found += Self.scan(Self.documentsModels, bundled: false)
        models = found
        if selected == nil || !found.contains(where: { $0 == selected }) { selected = found.first }
    }

    func model(named name: String) -> ModelEntry? { models.first { $0.name == name } }

    private static func scan(_ folder: URL, bundled: Bool) -> [ModelEntry] {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: folder.path) else { return [] }
        return names.sorted().compactMap { name in
            let url = folder.appendingPathComponent(name)
            guard fm.fileExists(atPath: url.appendingPathComponent("mcpm-config.json").path) else { return nil }
            return ModelEntry(name: name, url: url, bundled: bundled)
        }
    }

    /// Copies a bundle folder picked in the Files app into Documents/Models/<name>/ (the runtime mmaps files:
    /// it needs a local copy).
    func importFolder(_ url: URL) {
        let scoped = url.startAccessingSecurityScopedResource()
        defer { if scoped { url.stopAccessingSecurityScopedResource() } }
        let fm = FileManager.default
        guard fm.fileExists(atPath: url.appendingPathComponent("mcpm-config.json").path) else {
            importError = "\(url.lastPathComponent) is not a model folder (no mcpm-config.json)."
            return
        }
        let dest = Self.documentsModels.appendingPathComponent(url.lastPathComponent)
        do {
            try fm.createDirectory(at: Self.documentsModels, withIntermediateDirectories: true)
            if fm.fileExists(atPath: dest.path) { try fm.removeItem(at: dest) }
            try fm.copyItem(at: url, to: dest)
            importError = nil
            refresh()
            selected = models.first { $0.url.standardizedFileURL == dest.standardizedFileURL }
        } catch {
            importError = "Import failed: \(error.localizedDescription)"
        }
    }
}
