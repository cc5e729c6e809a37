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

    nonisolated static var documentsModels: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("Models")
    }

    init() { refresh() }

    func refresh() {
        // models copied with Finder land in Documents/Models too: keep them out of iCloud backups as well
        if FileManager.default.fileExists(atPath: Self.documentsModels.path) {
            try? Self.excludeFromBackup(Self.documentsModels)
        }
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
        return names.sorted().filter { !$0.hasPrefix(".") }.compactMap { name in  // not an unfinished .partial
            let url = folder.appendingPathComponent(name)
            guard fm.fileExists(atPath: url.appendingPathComponent("mcpm-config.json").path) else { return nil }
            return ModelEntry(name: name, url: url, bundled: bundled)
        }
    }

    /// True while importFolder copies (the Import button is disabled; the copy runs off the main thread).
    @Published private(set) var isImporting = false

    /// Copies a bundle folder picked in the Files app into Documents/Models/<name>/ (the runtime mmaps files: it
    /// needs a local copy). Off the main thread (a model is gigabytes), through NSFileCoordinator (the folder may be
    /// in iCloud Drive or another provider, downloaded on demand), into a temporary sibling that replaces the old
    /// copy only once complete: a failed or interrupted import loses nothing. Models are excluded from iCloud
    /// backups (they can be imported again; a backup of gigabytes would fail or fill the user's iCloud).
    func importFolder(_ url: URL) async {
        guard !isImporting else { return }
        isImporting = true
        defer { isImporting = false }
        let result = await Task.detached(priority: .userInitiated) { () -> Result<URL, Error> in
            Result { try Self.copyIn(url) }
        }.value
        switch result {
        case .success(let dest):
            importError = nil
            refresh()
            selected = models.first { $0.url.standardizedFileURL == dest.standardizedFileURL }
        case .failure(let error):
            importError = "Import failed: \(error.localizedDescription)"
        }
    }

    /// The copy itself (any thread): coordinated read of the picked folder, copy to Models/.<name>.partial, then
    /// swap it in place of Models/<name>.
    nonisolated static func copyIn(_ url: URL) throws -> URL {
        let scoped = url.startAccessingSecurityScopedResource()
        defer { if scoped { url.stopAccessingSecurityScopedResource() } }
        let fm = FileManager.default
        let name = url.lastPathComponent
        let dest = documentsModels.appendingPathComponent(name)
        let partial = documentsModels.appendingPathComponent(".\(name).partial")
        try fm.createDirectory(at: documentsModels, withIntermediateDirectories: true)
        try excludeFromBackup(documentsModels)
        var coordinationError: NSError?
        var copyError: Error?
        NSFileCoordinator().coordinate(readingItemAt: url, options: [], error: &coordinationError) { readable in
            do {
                guard fm.fileExists(atPath: readable.appendingPathComponent("mcpm-config.json").path) else {
                    throw CocoaError(.fileReadCorruptFile, userInfo: [
                        NSLocalizedDescriptionKey: "\(name) is not a model folder (no mcpm-config.json)"])
                }
                if fm.fileExists(atPath: partial.path) { try fm.removeItem(at: partial) }
                try fm.copyItem(at: readable, to: partial)
                if fm.fileExists(atPath: dest.path) {
                    _ = try fm.replaceItemAt(dest, withItemAt: partial)
                } else {
                    try fm.moveItem(at: partial, to: dest)
                }
            } catch {
                copyError = error
                try? fm.removeItem(at: partial)
            }
        }
        if let error = coordinationError ?? copyError { throw error }
        return dest
    }

    /// isExcludedFromBackup on a folder covers everything in it.
    nonisolated static func excludeFromBackup(_ folder: URL) throws {
        var url = folder
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        try url.setResourceValues(values)
    }
}
