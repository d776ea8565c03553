//! Synthetic meme templates for the gallery scale test and benchmark, generated here
//! (never downloaded) and deterministic for a seed.
//!
//! Templates come in look-alike families: the members of a family share the canvas size,
//! the panel layout, what each panel holds (a gradient, shapes, a text-like block) and the
//! palette, and differ in the content drawn from it (where the shapes are and which, the
//! gradient's direction, the text's line and word lengths), as different meme templates
//! of one style do. Queries are the edits a template picks up as a meme (a caption, a
//! crop, a recolour), each recompressed as JPEG.

use ab_glyph::FontVec;
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_polygon_mut};
use imageproc::point::Point;
use imageproc::rect::Rect;
use plugworker_testkit::memes::{self, Lcg};

/// Canvas sizes a family picks from (the embedder scales to 320 px on the longer side).
const SIZES: &[(u32, u32)] = &[(320, 240), (300, 300), (240, 320), (320, 180), (320, 260)];

/// Panel layouts as fractions of the canvas (left, top, right, bottom).
const LAYOUTS: &[&[(f32, f32, f32, f32)]] = &[
    &[(0.0, 0.0, 1.0, 1.0)],
    &[(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)],
    &[(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)],
    &[
        (0.0, 0.0, 0.5, 0.5),
        (0.5, 0.0, 1.0, 0.5),
        (0.0, 0.5, 0.5, 1.0),
        (0.5, 0.5, 1.0, 1.0),
    ],
    &[
        (0.0, 0.0, 1.0, 0.34),
        (0.0, 0.34, 1.0, 0.67),
        (0.0, 0.67, 1.0, 1.0),
    ],
    &[
        (0.0, 0.0, 0.62, 1.0),
        (0.62, 0.0, 1.0, 0.5),
        (0.62, 0.5, 1.0, 1.0),
    ],
];

/// Words for captions: what is written does not matter, only that it covers the image.
const WORDS: &[&str] = &[
    "when", "the", "deploy", "works", "friday", "nobody", "me", "my", "code", "boss", "every",
    "time", "again", "why", "is", "it", "always", "dns", "tests", "pass", "locally", "fine",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Panel {
    Gradient,
    Shapes,
    Text,
}

/// What the members of a family share.
struct Family {
    size: (u32, u32),
    layout: &'static [(f32, f32, f32, f32)],
    panels: Vec<Panel>,
    palette: Vec<[f32; 3]>,
    /// Per panel: the two palette entries its background runs between.
    colours: Vec<(usize, usize)>,
}

impl Family {
    fn new(seed: u64) -> Self {
        let mut random = Lcg::new(seed);
        let size = *random.pick(SIZES);
        let layout = *random.pick(LAYOUTS);
        let panels = (0..layout.len())
            .map(|_| *random.pick(&[Panel::Gradient, Panel::Shapes, Panel::Shapes, Panel::Text]))
            .collect();
        let palette = (0..5)
            .map(|_| {
                [
                    random.range(0.0, 255.0),
                    random.range(0.0, 255.0),
                    random.range(0.0, 255.0),
                ]
            })
            .collect();
        let colours = (0..layout.len())
            .map(|_| {
                let a = (random.uniform() * 5.0) as usize % 5;
                (a, (a + 1 + (random.uniform() * 4.0) as usize % 4) % 5)
            })
            .collect();
        Self {
            size,
            layout,
            panels,
            palette,
            colours,
        }
    }
}

/// Template `index` of the set `seed`: member `index % family_size` of family
/// `index / family_size`, so consecutive templates are look-alikes.
pub fn template(seed: u64, index: usize, family_size: usize) -> RgbImage {
    template_at(seed, index, family_size, 320)
}

/// [`template`] drawn with `longer_side` pixels on its longer side instead of 320: small
/// ones embed in a fraction of the time, for galleries whose size is what is measured.
pub fn template_at(seed: u64, index: usize, family_size: usize, longer_side: u32) -> RgbImage {
    let family_size = family_size.max(1);
    let family_seed = mix(seed, (index / family_size) as u64);
    let family = Family::new(family_seed);
    let mut random = Lcg::new(mix(family_seed, 1 + (index % family_size) as u64));
    let factor = longer_side as f32 / family.size.0.max(family.size.1) as f32;
    let (width, height) = (
        ((family.size.0 as f32 * factor) as u32).max(8),
        ((family.size.1 as f32 * factor) as u32).max(8),
    );
    let mut image = RgbImage::new(width, height);
    for (i, &(left, top, right, bottom)) in family.layout.iter().enumerate() {
        let (x0, y0) = ((left * width as f32) as u32, (top * height as f32) as u32);
        let (x1, y1) = (
            (right * width as f32) as u32,
            (bottom * height as f32) as u32,
        );
        let (a, b) = family.colours[i];
        let (from, to) = (family.palette[a], family.palette[b]);
        gradient(
            &mut image,
            (x0, y0, x1, y1),
            from,
            to,
            random.range(0.0, std::f32::consts::TAU),
        );
        let ink = |k: usize| to_rgb(family.palette[(a + 2 + k) % 5]);
        match family.panels[i] {
            Panel::Gradient => {}
            Panel::Shapes => {
                for k in 0..3 + (random.uniform() * 5.0) as usize {
                    shape(&mut image, (x0, y0, x1, y1), ink(k % 3), &mut random);
                }
            }
            Panel::Text => text_block(&mut image, (x0, y0, x1, y1), ink(0), &mut random),
        }
    }
    image
}

/// Edits a template picks up as a meme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Top and bottom captions, white with a black outline.
    Caption,
    /// 70–100 % of each side kept, off centre.
    Crop,
    /// Hue turned by 20–60°, brightness and saturation changed.
    Recolour,
}

impl Edit {
    pub const ALL: [Edit; 3] = [Edit::Caption, Edit::Crop, Edit::Recolour];

    pub fn name(self) -> &'static str {
        match self {
            Edit::Caption => "caption",
            Edit::Crop => "crop",
            Edit::Recolour => "recolour",
        }
    }
}

/// `template` with `edit` applied (its details drawn from `seed`), recompressed as JPEG at
/// quality 70–90 as memes are when reposted.
pub fn query(template: &RgbImage, edit: Edit, seed: u64, fonts: &[FontVec]) -> RgbImage {
    let mut random = Lcg::new(mix(seed, 0x51ed));
    let edited = match edit {
        Edit::Caption => {
            let mut line = |n: usize| {
                (0..n)
                    .map(|_| *random.pick(WORDS))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let (top, bottom) = (line(3), line(4));
            memes::caption(template, &top, &bottom, random.pick(fonts))
        }
        Edit::Crop => {
            let (left, top) = (random.range(0.0, 0.15), random.range(0.0, 0.15));
            let (right, bottom) = (random.range(0.85, 1.0), random.range(0.85, 1.0));
            memes::crop(template, left, top, right, bottom)
        }
        Edit::Recolour => {
            let sign = if random.uniform() < 0.5 { -1.0 } else { 1.0 };
            let turn = sign * random.range(20.0, 60.0);
            recolour(
                template,
                turn,
                random.range(0.8, 1.2),
                random.range(0.6, 1.3),
            )
        }
    };
    memes::recompress(&edited, 70 + (random.uniform() * 20.0) as u8)
}

/// Turns hues by `degrees` (a rotation about the grey axis), scales brightness by `gain`
/// and saturation (distance from grey) by `saturation`.
pub fn recolour(image: &RgbImage, degrees: f32, gain: f32, saturation: f32) -> RgbImage {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let third = 1.0f32 / 3.0;
    let root = third.sqrt();
    // Rodrigues' rotation about (1, 1, 1)/√3.
    let m = |i: usize, j: usize| {
        let diagonal = if i == j { cos } else { 0.0 };
        let cross = match (i + 3 - j) % 3 {
            0 => 0.0,
            1 => root * sin,
            _ => -root * sin,
        };
        diagonal + third * (1.0 - cos) + cross
    };
    let matrix = [
        [m(0, 0), m(0, 1), m(0, 2)],
        [m(1, 0), m(1, 1), m(1, 2)],
        [m(2, 0), m(2, 1), m(2, 2)],
    ];
    let mut out = image.clone();
    for pixel in out.pixels_mut() {
        let v = pixel.0.map(f32::from);
        let turned: [f32; 3] =
            std::array::from_fn(|i| (0..3).map(|j| matrix[i][j] * v[j]).sum::<f32>());
        let grey = turned.iter().sum::<f32>() / 3.0;
        pixel.0 = turned.map(|c| ((grey + (c - grey) * saturation) * gain).clamp(0.0, 255.0) as u8);
    }
    out
}

/// A well-mixed 64-bit value of `a` and `b` (splitmix64), for independent sub-seeds.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn to_rgb(c: [f32; 3]) -> Rgb<u8> {
    Rgb(c.map(|v| v.clamp(0.0, 255.0) as u8))
}

/// A linear gradient from `from` to `to` along `angle` across the rectangle.
fn gradient(
    image: &mut RgbImage,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    from: [f32; 3],
    to: [f32; 3],
    angle: f32,
) {
    let (dx, dy) = (angle.cos(), angle.sin());
    let (w, h) = ((x1 - x0).max(1) as f32, (y1 - y0).max(1) as f32);
    let span = dx.abs() * w + dy.abs() * h;
    for y in y0..y1 {
        for x in x0..x1 {
            let (u, v) = ((x - x0) as f32 - w / 2.0, (y - y0) as f32 - h / 2.0);
            let t = ((u * dx + v * dy) / span + 0.5).clamp(0.0, 1.0);
            let c: [f32; 3] = std::array::from_fn(|k| from[k] + (to[k] - from[k]) * t);
            image.put_pixel(x, y, to_rgb(c));
        }
    }
}

/// A circle, rectangle or triangle somewhere in the rectangle.
fn shape(
    image: &mut RgbImage,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    ink: Rgb<u8>,
    random: &mut Lcg,
) {
    let (w, h) = ((x1 - x0) as f32, (y1 - y0) as f32);
    let size = w.min(h) * random.range(0.12, 0.4);
    let cx = x0 as f32 + random.range(0.1, 0.9) * w;
    let cy = y0 as f32 + random.range(0.1, 0.9) * h;
    match (random.uniform() * 3.0) as u32 {
        0 => draw_filled_circle_mut(image, (cx as i32, cy as i32), (size / 2.0) as i32, ink),
        1 => {
            let (sw, sh) = (size * random.range(0.6, 1.6), size * random.range(0.6, 1.6));
            let rect = Rect::at((cx - sw / 2.0) as i32, (cy - sh / 2.0) as i32)
                .of_size(sw.max(2.0) as u32, sh.max(2.0) as u32);
            draw_filled_rect_mut(image, rect, ink);
        }
        _ => {
            let turn = random.range(0.0, std::f32::consts::TAU);
            let points: Vec<Point<i32>> = (0..3)
                .map(|k| {
                    let a = turn + k as f32 * std::f32::consts::TAU / 3.0;
                    Point::new(
                        (cx + a.cos() * size * 0.6) as i32,
                        (cy + a.sin() * size * 0.6) as i32,
                    )
                })
                .collect();
            if points[0] != points[2] {
                draw_polygon_mut(image, &points, ink);
            }
        }
    }
}

/// Lines of word-like bars, as a screenshot of text looks from afar.
fn text_block(
    image: &mut RgbImage,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    ink: Rgb<u8>,
    random: &mut Lcg,
) {
    let line = random.range(9.0, 16.0);
    let margin = ((x1 - x0) as f32 * 0.08) as u32;
    let mut y = y0 as f32 + line;
    while y + line < y1 as f32 {
        let mut x = (x0 + margin) as f32;
        let end = (x1 - margin) as f32 * random.range(0.7, 1.0);
        while x < end {
            let word = random.range(8.0, 40.0).min(end - x);
            if word >= 3.0 {
                let rect = Rect::at(x as i32, y as i32).of_size(word as u32, (line * 0.55) as u32);
                draw_filled_rect_mut(image, rect, ink);
            }
            x += word + random.range(4.0, 9.0);
        }
        y += line;
    }
}
