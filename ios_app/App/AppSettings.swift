import Foundation
import MCPM

/// The demo app's settings (UserDefaults), shared by the chat, the benchmark and the settings screen.
final class AppSettings: ObservableObject {
    static let shared = AppSettings()
    private let defaults = UserDefaults.standard

    @Published var threads: Int { didSet { defaults.set(threads, forKey: "threads") } }
    @Published var maxNewTokens: Int { didSet { defaults.set(maxNewTokens, forKey: "maxNewTokens") } }
    @Published var temperature: Double { didSet { defaults.set(temperature, forKey: "temperature") } }
    @Published var topK: Int { didSet { defaults.set(topK, forKey: "topK") } }
    @Published var topP: Double { didSet { defaults.set(topP, forKey: "topP") } }
    @Published var seed: Int { didSet { defaults.set(seed, forKey: "seed") } }
    /// .gpu/.auto only in apps exported with --device gpu (MCPMDevice.isAvailable); else .cpu.
    @Published var device: MCPMDevice { didSet { defaults.set(device.rawValue, forKey: "device") } }

    private init() {
        threads = defaults.object(forKey: "threads") as? Int ?? 0
        maxNewTokens = defaults.object(forKey: "maxNewTokens") as? Int ?? 256
        temperature = defaults.object(forKey: "temperature") as? Double ?? 0.7
        topK = defaults.object(forKey: "topK") as? Int ?? 40
        topP = defaults.object(forKey: "topP") as? Double ?? 0.95
        seed = defaults.object(forKey: "seed") as? Int ?? -1
        let stored = MCPMDevice(rawValue: defaults.string(forKey: "device") ?? "cpu") ?? .cpu
        device = stored.isAvailable ? stored : .cpu
    }

    var modelSettings: MCPMModelSettings { MCPMModelSettings(threads: threads, device: device) }

    /// A negative seed setting: a fresh random seed per message.
    var sampling: MCPMSampling {
        MCPMSampling(temperature: Float(temperature), topK: topK, topP: Float(topP),
                     seed: seed < 0 ? UInt64.random(in: 0 ... UInt64.max) : UInt64(seed))
    }
}
