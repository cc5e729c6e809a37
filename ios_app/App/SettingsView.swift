import MCPM
import SwiftUI

struct SettingsView: View {
    @ObservedObject private var settings = AppSettings.shared

    var body: some View {
        NavigationStack {
            Form {
                Section("Runtime (applies when a model is loaded next)") {
                    Stepper(settings.threads == 0 ? "Threads: auto (\(MCPMModelSettings.performanceCores) performance cores)"
                                                  : "Threads: \(settings.threads)",
                            value: $settings.threads, in: 0 ... 16)
                    Picker("Device", selection: $settings.device) {
                        ForEach(MCPMDevice.allCases, id: \.self) { d in
                            Text(d.isAvailable ? d.rawValue.uppercased() : "\(d.rawValue.uppercased()) (CPU export)")
                                .tag(d)
                        }
                    }
                    .pickerStyle(.segmented)
                    .onChange(of: settings.device) { d in
                        if !d.isAvailable { settings.device = .cpu }  // METAL HOOK: GPU only in --device gpu exports
                    }
                }
                Section("Sampling") {
                    Stepper("Max new tokens: \(settings.maxNewTokens)", value: $settings.maxNewTokens, in: 1 ... 4096,
                            step: 32)
                    VStack(alignment: .leading) {
                        Text(String(format: "Temperature: %.2f (0 = greedy)", settings.temperature))
                        Slider(value: $settings.temperature, in: 0 ... 2, step: 0.05)
                    }
                    Stepper("Top-k: \(settings.topK) (0 = off)", value: $settings.topK, in: 0 ... 200)
                    VStack(alignment: .leading) {
                        Text(String(format: "Top-p: %.2f (1 = off)", settings.topP))
                        Slider(value: $settings.topP, in: 0.05 ... 1, step: 0.05)
                    }
                    Stepper(settings.seed < 0 ? "Seed: random" : "Seed: \(settings.seed)", value: $settings.seed,
                            in: -1 ... 1_000_000)
                }
            }
            .navigationTitle("Settings")
        }
    }
}
