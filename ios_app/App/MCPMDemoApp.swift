import MCPM
import SwiftUI

@main
struct MCPMDemoApp: App {
    @StateObject private var store = ModelStore()
    /// Launched with -benchmark: the chat loads nothing (the benchmark runs alone).
    @StateObject private var chat = ChatViewModel(pausedForBenchmark: BenchmarkOptions.launch != nil)
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
                if let options = BenchmarkOptions.launch {
                    await BenchmarkRunner.runFromLaunchArguments(options, store: store, chat: chat)
                    if let entry = store.selected {  // then the chat, as after any launch
                        await chat.load(entry, settings: AppSettings.shared.modelSettings)
                    }
                }
            }
        }
        .onChange(of: scenePhase) { phase in
            if phase == .background { chat.enteredBackground() }  // no GPU work in the background
        }
    }
}
