//! Image → L2-normalised embedding with an SSCD-style ONNX model.

use image::RgbImage;
use plugworker_onnx::ort::value::Tensor;
use plugworker_onnx::{OnnxError, OnnxModel};

/// Width of the embeddings SSCD models produce.
pub const EMBEDDING_DIM: usize = 512;

/// Images are scaled so their longer side is this many pixels before embedding. SSCD was
/// trained around 288–320 px; larger inputs cost time quadratically and gain nothing for
/// template matching. Part of the gallery cache key: changing it re-embeds the templates.
pub const LONGER_SIDE: u32 = 320;

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("model {model} returned {got} values; expected a {EMBEDDING_DIM}-d embedding")]
    Shape { model: String, got: usize },
    #[error("image is empty")]
    EmptyImage,
}

/// An embedding model: uint8 NHWC RGB of any size in, one 512-d vector out.
pub struct Embedder {
    model: OnnxModel,
}

impl Embedder {
    pub fn new(model: OnnxModel) -> Self {
        Self { model }
    }

    /// Identifies the model and preprocessing, for caches of embeddings.
    pub fn cache_key(&self) -> String {
        format!("{}-{LONGER_SIDE}", self.model.sha256())
    }

    pub fn model_path(&self) -> &std::path::Path {
        self.model.path()
    }

    /// The embedding of `image`, L2-normalised so a dot product is the cosine similarity.
    pub fn embed(&self, image: &RgbImage) -> Result<Vec<f32>, EmbedderError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(EmbedderError::EmptyImage);
        }
        let scaled = tracing::info_span!("image.preprocess").in_scope(|| Self::preprocess(image));
        self.embed_preprocessed(scaled)
    }

    /// The model's input for `image`: scaled down (never up) so its longer side is at
    /// most [`LONGER_SIDE`]. Public so benchmarks can time the stages apart.
    pub fn preprocess(image: &RgbImage) -> RgbImage {
        scale_to_longer_side(image, LONGER_SIDE)
    }

    /// The embedding of an image [`Embedder::preprocess`] gave. The pixels move into the
    /// model's input tensor without a copy.
    pub fn embed_preprocessed(&self, scaled: RgbImage) -> Result<Vec<f32>, EmbedderError> {
        let (width, height) = scaled.dimensions();
        if width == 0 || height == 0 {
            return Err(EmbedderError::EmptyImage);
        }
        let input = Tensor::from_array((
            [1usize, height as usize, width as usize, 3],
            scaled.into_raw().into_boxed_slice(),
        ))
        .map_err(OnnxError::from)?;
        let _inference = tracing::info_span!(
            "model.inference",
            plugworker.model = "sscd",
            plugworker.width = width,
            plugworker.height = height
        )
        .entered();
        let mut session = self.model.session();
        let outputs = session.run([input.into()]).map_err(OnnxError::from)?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(OnnxError::from)?;
        if values.len() != EMBEDDING_DIM {
            return Err(EmbedderError::Shape {
                model: self.model.path().display().to_string(),
                got: values.len(),
            });
        }
        let mut embedding = values.to_vec();
        normalise(&mut embedding);
        Ok(embedding)
    }
}

/// Scales down (never up) so the longer side is at most `side`, with Pillow's bilinear
/// filter ([`resize_bilinear`]).
fn scale_to_longer_side(image: &RgbImage, side: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let longer = width.max(height);
    if longer <= side {
        return image.clone();
    }
    let scale = side as f64 / longer as f64;
    // Halves to even, as the reference's Python `round` (640×425 → 320×212).
    let new_width = ((width as f64 * scale).round_ties_even() as u32).max(1);
    let new_height = ((height as f64 * scale).round_ties_even() as u32).max(1);
    resize_bilinear(image, new_width, new_height)
}

/// Fixed-point precision of the filter weights, as Pillow's (`32 - 8 - 2`: a sum of
/// weighted 8-bit values fits an `i32` with room for negative weights).
const PRECISION_BITS: u32 = 22;

/// One axis of a resampling: for each output position, the first input position it
/// reads, how many it reads, and their fixed-point weights (`stride` per output).
struct Taps {
    spans: Vec<(usize, usize)>,
    weights: Vec<i32>,
    stride: usize,
}

impl Taps {
    /// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for its bilinear filter
    /// (a triangle stretched over `in_size / out_size` input pixels when shrinking, so
    /// every input pixel counts and thin caption strokes do not alias), in the same
    /// `f64` arithmetic so the weights, and so the pixels, come out identical.
    fn bilinear(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        // Pillow multiplies by the reciprocal; dividing can differ in the last bit.
        let reciprocal = 1.0 / filter_scale;
        let support = filter_scale; // the triangle's support is 1 input pixel, stretched
        let stride = support.ceil() as usize * 2 + 1;
        let mut spans = Vec::with_capacity(out_size);
        let mut weights = vec![0; out_size * stride];
        let mut row = vec![0.0f64; stride];
        for (out, weights) in weights.chunks_exact_mut(stride).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // `as` truncates toward zero, as C's (int) cast does.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = end.saturating_sub(first);
            let mut total = 0.0;
            for (i, w) in row[..count].iter_mut().enumerate() {
                let x = ((i + first) as f64 - center + 0.5) * reciprocal;
                *w = (1.0 - x.abs()).max(0.0);
                total += *w;
            }
            for (fixed, w) in weights.iter_mut().zip(&row[..count]) {
                let w = if total != 0.0 { w / total } else { *w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *fixed = if scaled < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            spans.push((first, count));
        }
        Self {
            spans,
            weights,
            stride,
        }
    }

    fn get(&self, out: usize) -> (usize, &[i32]) {
        let (first, count) = self.spans[out];
        (first, &self.weights[out * self.stride..][..count])
    }
}

/// A fixed-point sum back to a byte: rounding was added up front, as Pillow does.
#[inline(always)]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `image` to `width`×`height` exactly as Pillow's `Image.resize(size,
/// Image.BILINEAR)` does (the Python reference's preprocessing, scripts/bench_image_reference.py):
/// a horizontal pass over the rows the vertical pass will read, rounded to bytes, then a
/// vertical pass, both in 22-bit fixed point. The vertical pass runs along whole rows,
/// which the compiler vectorises; `image::imageops::resize` works in `f32` pixel by pixel
/// through a generic pixel API and took several times as long (docs/benchmarks.md).
///
/// Embeddings of the bench set through this resize and through that former one agree to
/// a cosine similarity of at least 0.9997 (scripts/bench-image.sh prints it), far inside
/// the gaps the threshold sits in, so embeddings a gallery stored before stay valid and
/// the cache key is unchanged.
fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_width, in_height) = (image.width() as usize, image.height() as usize);
    let (width, height) = (width as usize, height as usize);
    let source = image.as_raw();
    let vertical = Taps::bilinear(in_height, height);
    // Only the rows the vertical pass reads are resampled horizontally.
    let first_row = vertical.spans.first().map_or(0, |s| s.0);
    let end_row = vertical.spans.last().map_or(0, |s| s.0 + s.1);
    let horizontal_pass;
    let (rows, row_offset) = if width != in_width {
        let horizontal = Taps::bilinear(in_width, width);
        let mut out = vec![0u8; (end_row - first_row) * width * 3];
        for (in_row, out_row) in source
            .chunks_exact(in_width * 3)
            .skip(first_row)
            .zip(out.chunks_exact_mut(width * 3))
        {
            for (x, pixel) in out_row.chunks_exact_mut(3).enumerate() {
                let (first, weights) = horizontal.get(x);
                let span = &in_row[first * 3..][..weights.len() * 3];
                let (mut r, mut g, mut b) = (HALF, HALF, HALF);
                for (p, &w) in span.chunks_exact(3).zip(weights) {
                    r += i32::from(p[0]) * w;
                    g += i32::from(p[1]) * w;
                    b += i32::from(p[2]) * w;
                }
                pixel.copy_from_slice(&[clip8(r), clip8(g), clip8(b)]);
            }
        }
        horizontal_pass = out;
        (horizontal_pass.as_slice(), first_row)
    } else {
        (source.as_slice(), 0)
    };
    if height == in_height {
        let pixels = rows[(first_row - row_offset) * width * 3..][..height * width * 3].to_vec();
        return RgbImage::from_raw(width as u32, height as u32, pixels)
            .expect("the buffer has width × height pixels");
    }
    let line = width * 3;
    let mut pixels = vec![0u8; height * line];
    let mut sums = vec![0i32; line];
    for (y, out_row) in pixels.chunks_exact_mut(line).enumerate() {
        let (first, weights) = vertical.get(y);
        sums.fill(HALF);
        for (i, &w) in weights.iter().enumerate() {
            let in_row = &rows[(first + i - row_offset) * line..][..line];
            for (sum, &p) in sums.iter_mut().zip(in_row) {
                *sum += i32::from(p) * w;
            }
        }
        for (out, &sum) in out_row.iter_mut().zip(&sums) {
            *out = clip8(sum);
        }
    }
    RgbImage::from_raw(width as u32, height as u32, pixels)
        .expect("the buffer has width × height pixels")
}

/// The model already normalises; doing it again guards against rounding and against
/// a configured model that does not.
pub(crate) fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random pixels that Python can make too.
    fn pattern(width: u32, height: u32) -> RgbImage {
        let bytes = (0..(width * height * 3) as u64)
            .map(|i| ((i * 7919 + (i * i) % 251) % 256) as u8)
            .collect();
        RgbImage::from_raw(width, height, bytes).unwrap()
    }

    #[test]
    fn resizing_matches_pillow_bilinear_bit_for_bit() {
        // Pillow 13's `Image.frombytes("RGB", size, pattern).resize(out, Image.BILINEAR)`:
        // both axes shrunk, only the height, only the width, and one-pixel-wide and
        // one-pixel-high images (the other axis kept).
        let cases = [
            (
                (37, 23),
                (9, 6),
                "8c83937f8b8d787e825f6e8074868263828c7e7e767f6f86947192868d75767a7a806e8f6d8388848488768483886f7a9381877e927f797876606f7778887e658192818678817189937586898086787c8c8072906b848b847f887584878a6d7c9381928192847b8e7a637c7582917d667f8f7d8575846e8a90798285837e777986806d85627179817b897284848c6881937a8f819286788d7d61787876718a568393",
            ),
            (
                (23, 37),
                (23, 10),
                "76bd8cce9fe763838865897ea88ae6755e5f7a9b8d6ba68a85879a67545e6480d46b627475b79a5b76c46f77983359729d816d894666274b747e66a6608e62926aa197b7866194a6776db8723d6bad6f5f666f987a5557c96b829e85639297768b815b875f8d72656852ade6a69293899e5f5e774667468c717b75917d4e6d439a847b796596766ad46c7266e389ad689175918a6c568544776a9669756f806f71588c6eb07b9c62906da78a7fd370598e8f915a50a29aa67d7c7c7e917e863c93a1687a866e87873d7fd87a9f7ca56e7b92658e78a682de6c645981909169a98579858e726c54697ad2705f7b70a8a26274c773748b45626a8c887387465e3d59727960936b91678e6c968bab7699ad80ba90e7733cadad6c5e666c957b5557c869829d84628f967488b15b885e8e71656855aae5a58e90869e5e5f784866448e717a96907c936d439a857b7664977367d16d5180c66f7492927592886d5482457667956872717f6d6e578c6eb37c9a618e6da4897ed46d588a8d915a52a099a579797b7f907c865e93a26679856b85853e7fd87ba17ba58875cd7fb269a282dd696158838f906aa7837a828d736e526779ce6e5d7a6ba8a46175c473748a4261668a867084465e3c586f775c92688e678b6b978aad7396aa7eb68de65c5e94767f776768917d5658c766819c82628d957286b15b8a5c8e71666758a7e4a58b8e839e5d61794965428f717997907a946d449b857b7363977065cf6e4f7dc76f748e7b479fae5c5c7f46766495676f727e6c6c578c6eb57c98618d6da1887cd56b57878b9059539f99a575767a7f8e7a865d92a36378846984843f80d87ca379a68876c97cb168a17ca97a7f4e7a9b94639f8a7470926c5f4e5b84d9615f7672aa9b5c68cc67778942596a868e6487345b234e71735b8b63975b935c988fa66f9e9f75c19aea5360896d7e7c937ce15d4f57",
            ),
            (
                (37, 23),
                (12, 23),
                "98cec8b0ba8967848b6998a4679bb0935bb15d7a9ca78a9f73948e6eaaae6074aea469937c5693806caab1afb08394a86084ab746779407b9f25829f72815d515c59a47c84943be1b26e4f6a797e66ad90473b30242a32779167639084677781aa915b9a509878818a8c92637279b558a79675775497835c7e745f7abd916c7b526e9071639983924484c8227e93996ca384a8896d749b42c98e6b776d66a491707ca0918573767da06b8560817b93835165b29e80814b6f555c655e788062b754bca6898473569a808477a269625d79857b7e9e83629268a8b0356fc121aa8282847d826b97659547b09d649985915c9f7b59b19f90c4c6af72865b6089b177b09b7b66b46172ae98739386a7947680a854b0ab925a958a5a9e725691a79cb59ea9b85f7b9a6976a16576721a70ba5997675e58567a796ca551c6a154728868804fa582705e4e1b1a1a596b5b6b907c608b7e95976aab95787382988380759a6c8d52bca88060b8707e51a6886c56887688a6646b85a26391956d748abb1b6fb661839da78f886a85a06199954c9b6b7f877b5190b09a8675717093788a797196767ea181a7645da1768e566b514d518b64b657aba677838b6ba7746875988274785d616794ac7c60897b9a885978c11a86aa4b8f8581728a7f886b729443c48f946a9a7f56998069c5bfbb9fad706686a06899995294b69c5cb468788f9e959d71869362b6aa7063a79861937652928e7daeaeafb470849b6187b07a595b2a78af328b8c6e715658625ba96f99923eafaa6863568981719c82312821222a3483a3675b8b8272767caebe5c8a6f9f75817e997b736b97a66285b76e83769f7f5b725d4a9ad99c617470668cab649582a02f7ac32f8195a279997ea1916973923cc78475746958a6a3876d92877e7978839665816182b1918e615aaf8f81705c664e5a6a67847569b24fbfb18e975f4d8e888d78975c595882927c7497817a826492b12f73b92cad788c77827b66954d8f36dd9a76808888569b7b5db8ab9fb9be9c6c8475628da86aa6a48c5bad5175a5a0799178a08f7287ab5499ab9b5c8c80539b735b9aaaa4af919eae5f7fa1696988547887126bc26e984b584d578880729d42caa55c62786b7d5dab8a575345191b1f667b5f67907f4d8684",
            ),
            (
                (1, 37),
                (1, 10),
                "9fccc799a9766086a66da5a58762b56b7999969799778aa45b9eab9a5d97",
            ),
            (
                (37, 1),
                (12, 1),
                "98cec8b0ba8967848b6998a4679bb0935bb15d7a9ca78a9f73948e6eaaae6074aea46993",
            ),
        ];
        for ((width, height), (out_width, out_height), pillow) in cases {
            let resized = resize_bilinear(&pattern(width, height), out_width, out_height);
            let hex: String = resized
                .as_raw()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, pillow, "{width}×{height} → {out_width}×{out_height}");
        }
    }

    #[test]
    fn only_larger_images_are_scaled_and_the_aspect_ratio_is_kept() {
        let small = pattern(320, 200);
        assert_eq!(scale_to_longer_side(&small, 320), small);
        assert_eq!(
            scale_to_longer_side(&pattern(500, 333), 320).dimensions(),
            (320, 213)
        );
        // 425 × 0.5 = 212.5: the reference's Python `round` takes the even 212.
        assert_eq!(
            scale_to_longer_side(&pattern(640, 425), 320).dimensions(),
            (320, 212)
        );
        assert_eq!(
            scale_to_longer_side(&pattern(10, 1000), 320).dimensions(),
            (3, 320)
        );
    }
}
