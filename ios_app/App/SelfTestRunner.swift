import MCPM
import SwiftUI
import UIKit

/// `-selftest [-model NAME] [-prompt-tokens N] [-gen-tokens N] [-threads N]`: what `mcpm android verify` does on a
/// phone, on this iPhone (docs/self-test.md). For every CPU kernel set this CPU runs (i8mm on A15+, dotprod on
/// A13/A14, neon) and on the GPU when the package and the bundle have Metal kernels: load the model, check it
/// against the bundle's golden results (MCPMSession.selfTest), run the benchmark. Writes
/// Documents/selftest/latest.json (and <unix-millis>.json) with the device's facts, one run per kernel set / device
/// (the stats JSON + "self_test" + thermal state before and after) and "pass"; prints `MCPM_SELFTEST {json}`.
@MainActor
enum SelfTestRunner {
    static var folder: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("selftest")
    }

    @discardableResult
    static func run(_ options: BenchmarkOptions, entry: ModelEntry?, chat: ChatViewModel) async -> Bool {
        chat.pauseForBenchmark()  // runs alone, screen on
        UIApplication.shared.isIdleTimerDisabled = true
        var runs: [[String: Any]] = []
        if let entry = entry {
            var plans = [MCPMModelSettings(threads: options.threads)]
            do {  // a first load lists the kernel sets this CPU runs
                let probe = try await MCPMModel.load(bundleURL: entry.url, settings: plans[0])
                let supported = probe.kernelVariants().filter { $0.supported }.map { $0.name }
                if !supported.isEmpty {
                    plans = supported.map { MCPMModelSettings(threads: options.threads, kernelVariant: $0) }
                }
            } catch {
                runs.append(["kernel_variant": "-", "device": "cpu", "error": error.localizedDescription])
                plans = []
            }
            if MCPMDevice.gpu.isAvailable(for: entry.url) {
                plans.append(MCPMModelSettings(threads: options.threads, device: .gpu))
            }
            for settings in plans {
                runs.append(await oneRun(entry.url, settings, options))
            }
        } else {
            runs.append(["kernel_variant": "-", "device": "cpu",
                         "error": "no model \(options.model ?? "") in the app or in Documents/Models"])
        }
        UIApplication.shared.isIdleTimerDisabled = false
        chat.resumeAfterBenchmark()
        let passed = !runs.isEmpty && runs.allSatisfy { ($0["self_test"] as? [String: Any])?["pass"] as? Bool == true }
        let report: [String: Any] = ["device": deviceFacts(), "model": entry?.name ?? "", "runs": runs,
                                     "pass": passed,
                                     "settings": ["prompt_tokens": options.promptTokens,
                                                  "gen_tokens": options.genTokens, "threads": options.threads]]
        write(report)
        return passed
    }

    /// One kernel set / device: the self-test, then the benchmark; {"error": ...} when either cannot run.
    static func oneRun(_ url: URL, _ settings: MCPMModelSettings, _ options: BenchmarkOptions) async -> [String: Any] {
        let thermalBefore = BenchmarkRunner.thermalName(ProcessInfo.processInfo.thermalState)
        do {
            let model = try await MCPMModel.load(bundleURL: url, settings: settings)
            let session = try MCPMSession(model: model)
            let test = try await session.selfTest()
            let bench = try await session.benchmark(promptTokens: options.promptTokens, genTokens: options.genTokens)
            var run = (try? JSONSerialization.jsonObject(with: Data(bench.json.utf8))) as? [String: Any] ?? [:]
            run["self_test"] = (try? JSONSerialization.jsonObject(with: Data(test.utf8))) as? [String: Any] ?? [:]
            run["thermal_state_before"] = thermalBefore
            run["thermal_state_after"] = BenchmarkRunner.thermalName(ProcessInfo.processInfo.thermalState)
            return run
        } catch {
            return ["kernel_variant": settings.kernelVariant ?? "default", "device": settings.device.rawValue,
                    "error": error.localizedDescription]
        }
    }

    /// The machine identifier (e.g. "iPhone15,2"), iOS version, cores, memory.
    static func deviceFacts() -> [String: Any] {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return ["manufacturer": "Apple", "model": machine, "system": UIDevice.current.systemName,
                "version": UIDevice.current.systemVersion, "cores": ProcessInfo.processInfo.processorCount,
                "performance_cores": MCPMModelSettings.performanceCores,
                "memory_bytes": ProcessInfo.processInfo.physicalMemory]
    }

    private static func write(_ report: [String: Any]) {
        let data = (try? JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])) ?? Data("{}".utf8)
        print("MCPM_SELFTEST \(String(decoding: data, as: UTF8.self))")
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let millis = Int(Date().timeIntervalSince1970 * 1000)
            try data.write(to: folder.appendingPathComponent("\(millis).json"), options: .atomic)
            try data.write(to: folder.appendingPathComponent("latest.json"), options: .atomic)
        } catch {
            print("MCPM_SELFTEST_ERROR cannot write \(folder.path): \(error.localizedDescription)")
        }
    }
}
