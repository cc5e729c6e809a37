import MCPM
import SwiftUI

/// Options of a benchmark run; from the launch arguments `-benchmark [-model NAME] [-prompt-tokens N]
/// [-gen-tokens N] [-threads N]` (nil without `-benchmark`).
struct BenchmarkOptions {
    var model: String?
    var promptTokens = 128
    var genTokens = 64
    var threads = 0

    init() {}

    init?(arguments: [String]) {
        guard arguments.contains("-benchmark") else { return nil }
        func value(_ flag: String) -> String? {
            guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
            return arguments[i + 1]
        }
        model = value("-model")
        promptTokens = value("-prompt-tokens").flatMap(Int.init) ?? promptTokens
        genTokens = value("-gen-tokens").flatMap(Int.init) ?? genTokens
        threads = value("-threads").flatMap(Int.init) ?? threads
    }
}

enum BenchmarkRunner {
    /// Documents/bench: latest.json and <unix-millis>.json (shared with Finder / the Files app).
    static var folder: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("bench")
    }

    /// Loads the model, runs MCPMSession.benchmark, writes the stats JSON (or {"error": ...}) and prints one line
    /// `MCPM_BENCH {json}` / `MCPM_BENCH_ERROR message` (Xcode's console, `devicectl ... --console`).
    @discardableResult
    static func run(_ options: BenchmarkOptions, entry: ModelEntry?) async -> Result<MCPMBenchmarkResult, Error> {
        let result: Result<MCPMBenchmarkResult, Error>
        do {
            guard let entry = entry else {
                throw MCPMError.loadFailed("no model \(options.model ?? "") in the app or in Documents/Models")
            }
            let model = try await MCPMModel.load(bundleURL: entry.url,
                                                 settings: MCPMModelSettings(threads: options.threads))
            let session = try MCPMSession(model: model)
            result = .success(try await session.benchmark(promptTokens: options.promptTokens,
                                                          genTokens: options.genTokens))
        } catch {
            result = .failure(error)
        }
        write(result)
        return result
    }

    static func runFromLaunchArguments(_ options: BenchmarkOptions, store: ModelStore) async {
        let entry = await MainActor.run { options.model.flatMap { store.model(named: $0) } ?? store.selected }
        await run(options, entry: entry)
    }

    private static func write(_ result: Result<MCPMBenchmarkResult, Error>) {
        let json: String
        switch result {
        case .success(let r):
            json = r.json
            print("MCPM_BENCH \(r.json)")
        case .failure(let error):
            let message = error.localizedDescription
            let data = (try? JSONSerialization.data(withJSONObject: ["error": message])) ?? Data("{}".utf8)
            json = String(decoding: data, as: UTF8.self)
            print("MCPM_BENCH_ERROR \(message)")
        }
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let millis = Int(Date().timeIntervalSince1970 * 1000)
            try Data(json.utf8).write(to: folder.appendingPathComponent("\(millis).json"), options: .atomic)
            try Data(json.utf8).write(to: folder.appendingPathComponent("latest.json"), options: .atomic)
        } catch {
            print("MCPM_BENCH_ERROR cannot write \(folder.path): \(error.localizedDescription)")
        }
    }
}

struct BenchmarkView: View {
    @EnvironmentObject private var store: ModelStore
    @EnvironmentObject private var chat: ChatViewModel
    @State private var options = BenchmarkOptions()
    @State private var running = false
    @State private var output = "Runs the same synthetic prompt as the Android app's benchmark and writes " +
        "Documents/bench/latest.json."

    var body: some View {
        NavigationStack {
            Form {
                Section("Model: \(store.selected?.name ?? "none")") {
                    Stepper("Prompt tokens: \(options.promptTokens)", value: $options.promptTokens, in: 1 ... 2048,
                            step: 32)
                    Stepper("Generated tokens: \(options.genTokens)", value: $options.genTokens, in: 0 ... 1024,
                            step: 16)
                    Stepper(options.threads == 0 ? "Threads: auto" : "Threads: \(options.threads)",
                            value: $options.threads, in: 0 ... 16)
                    Button(running ? "Running…" : "Run") { Task { await run() } }
                        .disabled(running || store.selected == nil)
                }
                Section("Result") {
                    Text(output).font(.system(.footnote, design: .monospaced)).textSelection(.enabled)
                }
            }
            .navigationTitle("Benchmark")
        }
    }

    @MainActor
    private func run() async {
        running = true
        chat.stop()
        switch await BenchmarkRunner.run(options, entry: store.selected) {
        case .success(let r):
            output = String(format: "prefill %.1f tok/s\ndecode %.1f tok/s\nfirst token %.0f ms\nkernels %@, %ld threads",
                            r.stats.prefillTokensPerSecond, r.stats.decodeTokensPerSecond,
                            r.stats.timeToFirstTokenMs, r.stats.kernelVariant, r.stats.threads) + "\n\n" + r.json
        case .failure(let error):
            output = error.localizedDescription
        }
        running = false
    }
}
