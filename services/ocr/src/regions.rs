//! Connected regions of a binary mask: the candidate text regions of DB detection.
//!
//! PaddleOCR traces the regions' borders (OpenCV's `findContours`, Suzuki–Abe border
//! following) and boxes each border by its minimum-area rectangle; here only each
//! region's outer border counts (docs/ocr.md), and its rectangle depends on nothing but
//! the region's convex hull. So a region is found here by a flood fill and described
//! by its boundary pixels: every hull vertex of a region is a boundary pixel on its outer
//! border (the 4-neighbour beyond it in the hull's outward direction is unset and outside
//! the region), so the boundary, the outer border and the whole region have the same
//! hull, and the same rectangle. Regions come in the raster order of their first pixel,
//! the order in which border following meets their outer borders. A test checks this
//! against union–find labelling on random masks.
//!
//! (Border following through imageproc's `find_contours`, used here before, labels the
//! outer border of some regions that start in the image's first column as a hole
//! border, so a filter on outer borders dropped them: text touching the left edge could
//! be lost. A flood fill has no such case.)

/// The boundary pixels `[x, y]` of each 8-connected region of set pixels of `mask`
/// (row-major, `width` × `height`), regions in the raster order of their first pixel, at
/// most `max_regions` of them. A pixel is on the boundary when one of its 4-neighbours is
/// unset or off the mask. Within a region, the order of the pixels is unspecified.
pub fn region_boundaries(
    mask: &[bool],
    width: usize,
    height: usize,
    max_regions: usize,
) -> Vec<Vec<[f32; 2]>> {
    assert_eq!(mask.len(), width * height, "mask size");
    let set = |x: usize, y: usize| mask[y * width + x];
    let mut seen = vec![false; mask.len()];
    let mut regions = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if regions.len() == max_regions {
            break;
        }
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut boundary = Vec::new();
        while let Some(index) = stack.pop() {
            let (x, y) = (index % width, index / width);
            let interior = x > 0
                && x + 1 < width
                && y > 0
                && y + 1 < height
                && set(x - 1, y)
                && set(x + 1, y)
                && set(x, y - 1)
                && set(x, y + 1);
            if !interior {
                boundary.push([x as f32, y as f32]);
            }
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let neighbour = ny * width + nx;
                    if mask[neighbour] && !seen[neighbour] {
                        seen[neighbour] = true;
                        stack.push(neighbour);
                    }
                }
            }
        }
        regions.push(boundary);
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::convex_hull;
    use std::collections::HashMap;

    /// A small xorshift generator: deterministic masks without a dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A mask of blobs (rectangles and single pixels) with holes cut in some.
    fn random_mask(random: &mut Random, width: usize, height: usize) -> Vec<bool> {
        let mut mask = vec![false; width * height];
        for _ in 0..(random.next() % 12) {
            let (w, h) = (
                1 + random.next() as usize % 12,
                1 + random.next() as usize % 8,
            );
            let (x0, y0) = (
                random.next() as usize % width,
                random.next() as usize % height,
            );
            let value = !random.next().is_multiple_of(4);
            for y in y0..(y0 + h).min(height) {
                for x in x0..(x0 + w).min(width) {
                    mask[y * width + x] = value;
                }
            }
        }
        for _ in 0..(random.next() % 20) {
            let i = random.next() as usize % mask.len();
            mask[i] = !mask[i];
        }
        mask
    }

    fn hull(points: &[[f32; 2]]) -> Vec<[f32; 2]> {
        convex_hull(points)
    }

    /// The regions of `mask` found another way, as every pixel of each: union–find over
    /// the 8-neighbour pairs, regions in the raster order of their first pixel.
    fn labelled_regions(mask: &[bool], width: usize, height: usize) -> Vec<Vec<[f32; 2]>> {
        let mut parent: Vec<usize> = (0..mask.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for y in 0..height {
            for x in 0..width {
                if !mask[y * width + x] {
                    continue;
                }
                // Right, below-left, below, below-right: every 8-neighbour pair once.
                for (dx, dy) in [(1isize, 0isize), (-1, 1), (0, 1), (1, 1)] {
                    let (nx, ny) = (x as isize + dx, y as isize + dy);
                    if nx < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let neighbour = ny as usize * width + nx as usize;
                    if mask[neighbour] {
                        let (a, b) = (
                            root(&mut parent, y * width + x),
                            root(&mut parent, neighbour),
                        );
                        parent[a.max(b)] = a.min(b);
                    }
                }
            }
        }
        let mut order = Vec::new();
        let mut pixels: HashMap<usize, Vec<[f32; 2]>> = HashMap::new();
        for i in (0..mask.len()).filter(|&i| mask[i]) {
            let label = root(&mut parent, i);
            pixels
                .entry(label)
                .or_insert_with(|| {
                    order.push(label);
                    Vec::new()
                })
                .push([(i % width) as f32, (i / width) as f32]);
        }
        order
            .iter()
            .map(|label| pixels.remove(label).unwrap())
            .collect()
    }

    #[test]
    fn the_same_regions_in_the_same_order_with_the_same_hulls_as_labelling() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        let mut regions_seen = 0;
        for case in 0..2000 {
            let (width, height) = (
                1 + random.next() as usize % 40,
                1 + random.next() as usize % 30,
            );
            let mask = random_mask(&mut random, width, height);
            let expected = labelled_regions(&mask, width, height);
            let found = region_boundaries(&mask, width, height, usize::MAX);
            assert_eq!(found.len(), expected.len(), "case {case}: region count");
            for (i, (ours, theirs)) in found.iter().zip(&expected).enumerate() {
                assert_eq!(hull(ours), hull(theirs), "case {case}, region {i}: hull");
                assert!(
                    ours.len() <= theirs.len(),
                    "case {case}, region {i}: boundary pixels are the region's"
                );
            }
            regions_seen += found.len();
            let capped = region_boundaries(&mask, width, height, 2);
            assert_eq!(capped.len(), found.len().min(2), "case {case}: cap");
            assert_eq!(
                capped[..],
                found[..capped.len()],
                "case {case}: capped prefix"
            );
        }
        assert!(
            regions_seen > 5000,
            "the masks exercise many regions: {regions_seen}"
        );
    }

    #[test]
    fn a_region_in_the_first_column_is_a_region() {
        // imageproc 0.25's find_contours calls the border of the first pixel a hole border.
        let mask = [true, false, false, true];
        let regions = region_boundaries(&mask, 4, 1, usize::MAX);
        assert_eq!(regions, vec![vec![[0.0, 0.0]], vec![[3.0, 0.0]]]);
    }

    #[test]
    fn diagonal_neighbours_join_a_region_and_holes_do_not_split_it() {
        #[rustfmt::skip]
        let mask = [
            1, 0, 0, 0, 0,
            0, 1, 0, 1, 1,
            0, 0, 0, 1, 0,
            0, 0, 0, 1, 1,
        ].map(|v| v == 1);
        let regions = region_boundaries(&mask, 5, 4, usize::MAX);
        assert_eq!(regions.len(), 2);
        assert_eq!(hull(&regions[0]), hull(&[[0.0, 0.0], [1.0, 1.0]]));
        let ring: Vec<bool> = (0..25).map(|i| i != 12).collect();
        let regions = region_boundaries(&ring, 5, 5, usize::MAX);
        assert_eq!(regions.len(), 1, "a ring with a hole is one region");
        assert_eq!(
            regions[0].len(),
            20,
            "the frame and the hole's four neighbours"
        );
        assert!(region_boundaries(&[false; 6], 3, 2, usize::MAX).is_empty());
    }
}
