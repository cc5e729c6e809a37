import Foundation
#if canImport(UIKit)
import UIKit
#endif

// IMAGE INPUT (MiniCPM-V bundles): NOT WIRED. The C runtime has no vision encoder yet (another issue); this stub
// only fixes the Swift shape of the API so that the demo app's image picker compiles. It always throws.

#if canImport(UIKit)
extension MCPMSession {
    /// Attaches an image to the next chat turn of a MiniCPM-V bundle. Not available yet: always throws
    /// MCPMError.notAvailable.
    public func attachImage(_ image: UIImage) throws {
        _ = image
        throw MCPMError.notAvailable("Image input (MiniCPM-V bundles) is not supported by this runtime yet.")
    }
}
#endif
