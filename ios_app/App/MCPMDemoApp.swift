import MCPM
import SwiftUI

@main
struct MCPMDemoApp: App {
    @StateObject private var store = ModelStore()
    /// Launched with -benchmark or -selftest: the chat loads nothing (the benchmark runs alone).
    @StateObject private var chat = ChatViewModel(pausedForBenchmark: BenchmarkOptions.launch != nil
                                                                      || BenchmarkOptions.selfTestLaunch != nil)
    @Environment(\.scenePhase) private var scenePhase

    var body: some Scene {
        WindowGroup {
            TabView {
                ChatView().tabItem { Label("Chat", systemImage: "bubble.left.and.bubble.right") }
                BenchmarkView().tabItem { Label("Benchmark", systemImage: "speedometer") }
                SettingsView().tabItem { Label("Settings", systemImage: "gear") }
            }
            .environmentObject(store)
            .environmentObject(chat)
            .task {
                // `-benchmark [-model NAME] [-prompt-tokens N] [-gen-tokens N] [-threads N]`: run the benchmark
                // once at launch and write its stats JSON to Documents/bench/latest.json (see README).
                // `-selftest [same options]`: the self-test and benchmark in every kernel set (and on the GPU),
                // written to Documents/selftest/latest.json (docs/self-test.md).
                let selfTest = BenchmarkOptions.selfTestLaunch
                if let options = selfTest {
                    let entry = options.model.flatMap { store.model(named: $0) } ?? store.selected
                    await SelfTestRunner.run(options, entry: entry, chat: chat)
                } else if let options = BenchmarkOptions.launch {
                    await BenchmarkRunner.runFromLaunchArguments(options, store: store, chat: chat)
                }
                if selfTest != nil || BenchmarkOptions.launch != nil, let entry = store.selected {
                    await chat.load(entry, settings: AppSettings.shared.modelSettings)  // then the chat, as always
                }
            }
        }
        .onChange(of: scenePhase) { phase in
            if phase == .background { chat.enteredBackground() }  // no GPU work in the background
        }
    }
}
