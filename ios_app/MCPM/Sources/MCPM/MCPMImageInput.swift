import CMCPM
import Foundation
#if canImport(CoreGraphics)
import CoreGraphics
#endif
#if canImport(UIKit)
import UIKit
#endif

// IMAGE INPUT (MiniCPM-V bundles, docs/minicpmv.md): the image is drawn into an RGBA8 CGContext, the alpha byte is
// dropped (RGB8, what mcpm_encode_image takes), and the runtime runs the vision encoder at once; the image goes into
// the next chat turn's prompt. Bundles without a vision encoder (MCPMModel.hasVision == false) refuse it with the
// runtime's one-line error.

/// What encoding one image gave: the runtime's statistics right after mcpm_encode_image.
public struct MCPMImageEncoding: Sendable, Equatable {
    /// Vision-encoder runs: the overview plus the slices.
    public var visionRuns: Int
    /// Time of the vision encoder for this image (stats "image_encode_ms"), apart from prefill and decode.
    public var encodeMs: Double
    /// Patches over all runs (stats "image_patches").
    public var patches: Int
    /// The size given to the runtime (after `reducedFrom`, if any).
    public var width: Int
    public var height: Int
    /// The original size when this package downscaled the image to the session's maxImagePixels, else nil.
    public var reducedFrom: (width: Int, height: Int)? {
        get { reducedWidth > 0 ? (reducedWidth, reducedHeight) : nil }
        set {
            reducedWidth = newValue?.width ?? 0
            reducedHeight = newValue?.height ?? 0
        }
    }
    /// The runtime's notice when it downscaled the image (stats "notice"), else "".
    public var notice: String
    private var reducedWidth = 0
    private var reducedHeight = 0

    public init(visionRuns: Int, encodeMs: Double, patches: Int, width: Int, height: Int, notice: String) {
        self.visionRuns = visionRuns
        self.encodeMs = encodeMs
        self.patches = patches
        self.width = width
        self.height = height
        self.notice = notice
    }

    /// One line for a status bar: "image 640x480: 3 vision runs, 812 ms".
    public var summary: String {
        var line = "image \(width)x\(height): \(visionRuns) vision runs, " + String(format: "%.0f ms", encodeMs)
        if let r = reducedFrom { line += " (reduced from \(r.width)x\(r.height))" }
        if !notice.isEmpty { line += " (\(notice))" }
        return line
    }
}

#if canImport(CoreGraphics)
/// RGB8 pixels (uint8[height][width][3], row-major, top row first) of a CGImage.
public struct MCPMImagePixels: Sendable {
    public let rgb: [UInt8]
    public let width: Int
    public let height: Int
    /// The CGImage's size when it was drawn smaller (over maxPixels), else nil.
    public let reducedFrom: (width: Int, height: Int)?

    /// Draws image into an RGBA8 bitmap (sRGB, alpha skipped: transparent pixels come out over black) and keeps
    /// R, G, B; at most maxPixels pixels (MCPMSession.maxImagePixels: larger images are drawn smaller here, for a
    /// phone's memory; the runtime would downscale them anyway).
    public init(_ image: CGImage, maxPixels: Int) throws {
        var w = image.width
        var h = image.height
        guard w > 0, h > 0 else { throw MCPMError.imageFailed("the image is empty (\(w)x\(h) pixels)") }
        guard maxPixels > 0 else { throw MCPMError.imageFailed("the model takes no images (a MiniCPM-V bundle does)") }
        var reduced: (width: Int, height: Int)?
        if w * h > maxPixels {
            let scale = (Double(maxPixels) / Double(w * h)).squareRoot()
            reduced = (w, h)
            w = max(1, Int(Double(w) * scale))
            h = max(1, Int(Double(h) * scale))
        }
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { buf in
            guard let space = CGColorSpace(name: CGColorSpace.sRGB),
                  let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8,
                                      bytesPerRow: w * 4, space: space,
                                      bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            ctx.interpolationQuality = .high
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn else { throw MCPMError.imageFailed("cannot draw the image into an RGB bitmap") }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0 ..< w * h {
            rgb[3 * i] = rgba[4 * i]
            rgb[3 * i + 1] = rgba[4 * i + 1]
            rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        self.rgb = rgb
        width = w
        height = h
        reducedFrom = reduced
    }
}

extension MCPMSession {
    /// Runs the vision encoder on image (a MiniCPM-V bundle) and attaches it to the next chat turn
    /// (`generate(prompt:mode: .chat)`); several images attach in order. Throws MCPMError.imageFailed with the
    /// runtime's message (no vision encoder in the bundle, a too elongated image, ...).
    public func encodeImage(_ image: CGImage) async throws -> MCPMImageEncoding {
        try await encode(try MCPMImagePixels(image, maxPixels: maxImagePixels))
    }

    /// Encodes RGB8 pixels prepared with MCPMImagePixels (see encodeImage(_:)).
    public func encode(_ pixels: MCPMImagePixels) async throws -> MCPMImageEncoding {
        let model = self.model
        let flag = beginCancellable()  // cancel() stops the encode between vision runs (nothing is attached)
        return try await withCheckedThrowingContinuation { continuation in
            model.queue.async {
                let session = self.handle
                mcpm_set_abort_callback(model.handle, mcpmAbortFlag, Unmanaged.passUnretained(flag).toOpaque())
                defer { mcpm_set_abort_callback(model.handle, nil, nil) }
                let runs: Int32 = pixels.rgb.withUnsafeBufferPointer { p in
                    mcpm_encode_image(session, p.baseAddress, Int32(clamping: pixels.width),
                                      Int32(clamping: pixels.height))
                }
                guard runs >= 0 else {
                    continuation.resume(throwing: MCPMError.imageFailed(String(cString: mcpm_session_last_error(session))))
                    return
                }
                continuation.resume(with: Result {
                    let stats = try MCPMStats.decode(try model.statsJSONOnQueue())
                    let notice = stats.notice ?? ""
                    var result = MCPMImageEncoding(visionRuns: Int(runs), encodeMs: stats.imageEncodeMs ?? 0,
                                                   patches: stats.imagePatches ?? 0, width: pixels.width,
                                                   height: pixels.height,
                                                   notice: notice.contains("image") ? notice : "")
                    result.reducedFrom = pixels.reducedFrom
                    return result
                })
            }
        }
    }
}
#endif

extension MCPMSession {
    /// Drops the images attached to the next turn (reset() drops them too).
    public func clearImages() {
        model.queue.async { mcpm_session_clear_images(self.handle) }
    }
}

#if canImport(UIKit)
extension MCPMSession {
    /// encodeImage(_:) of a UIImage: turned upright by its imageOrientation (camera photos) and drawn at most
    /// maxImagePixels pixels.
    public func encodeImage(_ image: UIImage) async throws -> MCPMImageEncoding {
        let pixelWidth = Int((image.size.width * image.scale).rounded())
        let pixelHeight = Int((image.size.height * image.scale).rounded())
        guard pixelWidth > 0, pixelHeight > 0 else {
            throw MCPMError.imageFailed("the image is empty (\(pixelWidth)x\(pixelHeight) pixels)")
        }
        if image.imageOrientation == .up, let cg = image.cgImage {
            return try await encodeImage(cg)
        }
        // Redraw upright (and not larger than maxPixels): UIImage.draw applies the orientation.
        var w = pixelWidth
        var h = pixelHeight
        if maxImagePixels > 0, w * h > maxImagePixels {
            let scale = (Double(maxImagePixels) / Double(w * h)).squareRoot()
            w = max(1, Int(Double(w) * scale))
            h = max(1, Int(Double(h) * scale))
        }
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        format.opaque = true
        let upright = UIGraphicsImageRenderer(size: CGSize(width: w, height: h), format: format).image { _ in
            image.draw(in: CGRect(x: 0, y: 0, width: w, height: h))
        }
        guard let cg = upright.cgImage else { throw MCPMError.imageFailed("the image has no bitmap (CGImage)") }
        var result = try await encode(try MCPMImagePixels(cg, maxPixels: maxImagePixels))
        if w != pixelWidth || h != pixelHeight { result.reducedFrom = (pixelWidth, pixelHeight) }
        return result
    }

    /// The earlier name of encodeImage(_:) for UIImage.
    @discardableResult
    public func attachImage(_ image: UIImage) async throws -> MCPMImageEncoding {
        try await encodeImage(image)
    }
}
#endif
