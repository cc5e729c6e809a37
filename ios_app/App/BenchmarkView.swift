import MCPM
import SwiftUI
import UIKit

/// Options of a benchmark run; from the launch arguments `-benchmark [-model NAME] [-prompt-tokens N]
/// [-gen-tokens N] [-threads N]` (nil without `-benchmark`).
struct BenchmarkOptions {
    var model: String?
    var promptTokens = 128
    var genTokens = 64
    var threads = 0

    init() {}

    /// flag: "-benchmark", or "-selftest" (SelfTestRunner: the same options).
    init?(arguments: [String], flag: String = "-benchmark") {
        guard arguments.contains(flag) else { return nil }
        func value(_ flag: String) -> String? {
            guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
            return arguments[i + 1]
        }
        model = value("-model")
        promptTokens = value("-prompt-tokens").flatMap(Int.init) ?? promptTokens
        genTokens = value("-gen-tokens").flatMap(Int.init) ?? genTokens
        threads = value("-threads").flatMap(Int.init) ?? threads
    }

    /// The options of this launch (nil without -benchmark).
    static let launch = BenchmarkOptions(arguments: ProcessInfo.processInfo.arguments)
    /// The options of a `-selftest` launch (nil without it).
    static let selfTestLaunch = BenchmarkOptions(arguments: ProcessInfo.processInfo.arguments, flag: "-selftest")
}

enum BenchmarkRunner {
    /// Documents/bench: latest.json and <unix-millis>.json (shared with Finder / the Files app).
    static var folder: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("bench")
    }

    /// Loads the model, runs MCPMSession.benchmark, writes the stats JSON (or {"error": ...}) and prints one line
    /// `MCPM_BENCH {json}` / `MCPM_BENCH_ERROR message` (Xcode's console, `devicectl ... --console`).
    /// It runs alone: the chat's model is freed first (chat.pauseForBenchmark) and loaded again afterwards; the
    /// screen stays on (isIdleTimerDisabled); the JSON records thermal_state_before / thermal_state_after
    /// (ProcessInfo.thermalState: nominal, fair, serious, critical): numbers from a hot phone are not comparable.
    @MainActor @discardableResult
    static func run(_ options: BenchmarkOptions, entry: ModelEntry?, chat: ChatViewModel)
        async -> Result<MCPMBenchmarkResult, Error> {
        chat.pauseForBenchmark()
        UIApplication.shared.isIdleTimerDisabled = true
        let thermalBefore = thermalName(ProcessInfo.processInfo.thermalState)
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
        let facts: [String: Any] = ["thermal_state_before": thermalBefore,
                                    "thermal_state_after": thermalName(ProcessInfo.processInfo.thermalState),
                                    "chat_model_freed": true, "screen_kept_on": true]
        UIApplication.shared.isIdleTimerDisabled = false
        chat.resumeAfterBenchmark()
        write(result, facts: facts)
        return result
    }

    @MainActor
    static func runFromLaunchArguments(_ options: BenchmarkOptions, store: ModelStore, chat: ChatViewModel) async {
        let entry = options.model.flatMap { store.model(named: $0) } ?? store.selected
        await run(options, entry: entry, chat: chat)
    }

    static func thermalName(_ state: ProcessInfo.ThermalState) -> String {
        switch state {
        case .nominal: return "nominal"
        case .fair: return "fair"
        case .serious: return "serious"
        case .critical: return "critical"
        @unknown default: return "unknown"
        }
    }

    /// The runtime's stats JSON with facts added (sorted keys).
    static func withFacts(_ json: String, _ facts: [String: Any]) -> String {
        guard var object = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else {
            return json
        }
        object.merge(facts) { _, new in new }
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
            return json
        }
        return String(decoding: data, as: UTF8.self)
    }

    private static func write(_ result: Result<MCPMBenchmarkResult, Error>, facts: [String: Any]) {
        let json: String
        switch result {
        case .success(let r):
            json = withFacts(r.json, facts)
            print("MCPM_BENCH \(json)")
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
        defer { running = false }
        let result = await BenchmarkRunner.run(options, entry: store.selected, chat: chat)
        if let entry = store.selected {  // the chat's model again
            Task { await chat.load(entry, settings: AppSettings.shared.modelSettings) }
        }
        switch result {
        case .success(let r):
            output = String(format: "prefill %.1f tok/s\ndecode %.1f tok/s\nfirst token %.0f ms\nkernels %@, %ld threads",
                            r.stats.prefillTokensPerSecond, r.stats.decodeTokensPerSecond,
                            r.stats.timeToFirstTokenMs, r.stats.kernelVariant, r.stats.threads) + "\n\n" + r.json
        case .failure(let error):
            output = error.localizedDescription
        }
    }
}
