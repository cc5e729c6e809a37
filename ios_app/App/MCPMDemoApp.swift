import MCPM
import SwiftUI

@main
struct MCPMDemoApp: App {
    @StateObject private var store = ModelStore()
    @StateObject private var chat = ChatViewModel()

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
                if let options = BenchmarkOptions(arguments: ProcessInfo.processInfo.arguments) {
                    await BenchmarkRunner.runFromLaunchArguments(options, store: store)
                }
            }
        }
    }
}
