//! Plane geometry for text boxes: convex hulls, minimum-area rectangles, and the
//! perspective transform that straightens a box into a text-line image.

/// Four corners: top-left, top-right, bottom-right, bottom-left (x, y).
pub type Quad = [[f32; 2]; 4];

/// A rectangle at any angle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotatedRect {
    pub center: [f32; 2],
    /// Unit vector along the first side.
    pub axis: [f32; 2],
    /// Length of the side along `axis`, and of the perpendicular side.
    pub width: f32,
    pub height: f32,
}

impl RotatedRect {
    pub fn shorter_side(&self) -> f32 {
        self.width.min(self.height)
    }

    /// The rectangle grown by `distance` on every side. Growing a rectangle with rounded
    /// joins (PaddleOCR's "unclip") and taking the minimum-area rectangle of the result
    /// gives exactly this.
    pub fn grown(&self, distance: f32) -> RotatedRect {
        RotatedRect {
            width: self.width + 2.0 * distance,
            height: self.height + 2.0 * distance,
            ..*self
        }
    }

    pub fn corners(&self) -> [[f32; 2]; 4] {
        let [cx, cy] = self.center;
        let [ux, uy] = self.axis;
        let (vx, vy) = (-uy, ux);
        let (hw, hh) = (self.width / 2.0, self.height / 2.0);
        [
            [cx - ux * hw - vx * hh, cy - uy * hw - vy * hh],
            [cx + ux * hw - vx * hh, cy + uy * hw - vy * hh],
            [cx + ux * hw + vx * hh, cy + uy * hw + vy * hh],
            [cx - ux * hw + vx * hh, cy - uy * hw + vy * hh],
        ]
    }
}

fn cross(o: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Convex hull, counter-clockwise in a y-up frame (Andrew's monotone chain).
pub fn convex_hull(points: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let mut hull: Vec<[f32; 2]> = Vec::with_capacity(sorted.len() * 2);
    for pass in 0..2 {
        let start = hull.len();
        let points: Box<dyn Iterator<Item = &[f32; 2]>> = if pass == 0 {
            Box::new(sorted.iter())
        } else {
            Box::new(sorted.iter().rev())
        };
        for &p in points {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The smallest-area rectangle enclosing `points` (one side always lies on a hull edge).
pub fn min_area_rect(points: &[[f32; 2]]) -> Option<RotatedRect> {
    let hull = convex_hull(points);
    match hull.len() {
        0 => return None,
        1 => {
            return Some(RotatedRect {
                center: hull[0],
                axis: [1.0, 0.0],
                width: 0.0,
                height: 0.0,
            });
        }
        _ => {}
    }
    let mut best: Option<(f32, RotatedRect)> = None;
    for i in 0..hull.len() {
        let a = hull[i];
        let b = hull[(i + 1) % hull.len()];
        let length = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
        if length == 0.0 {
            continue;
        }
        let axis = [(b[0] - a[0]) / length, (b[1] - a[1]) / length];
        let normal = [-axis[1], axis[0]];
        let (mut min_u, mut max_u, mut min_v, mut max_v) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let u = p[0] * axis[0] + p[1] * axis[1];
            let v = p[0] * normal[0] + p[1] * normal[1];
            min_u = min_u.min(u);
            max_u = max_u.max(u);
            min_v = min_v.min(v);
            max_v = max_v.max(v);
        }
        let area = (max_u - min_u) * (max_v - min_v);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((min_u + max_u) / 2.0, (min_v + max_v) / 2.0);
            best = Some((
                area,
                RotatedRect {
                    center: [axis[0] * cu + normal[0] * cv, axis[1] * cu + normal[1] * cv],
                    axis,
                    width: max_u - min_u,
                    height: max_v - min_v,
                },
            ));
        }
    }
    best.map(|(_, rect)| rect)
}

/// Orders four corners as top-left, top-right, bottom-right, bottom-left: the two with
/// the smallest x are the left side, and on each side the smaller y is the top.
pub fn order_corners(points: [[f32; 2]; 4]) -> Quad {
    let mut by_x = points;
    by_x.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([by_x[0], by_x[1]], [by_x[2], by_x[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

pub fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Whether `p` lies inside (or on) the convex polygon `quad`, whichever its winding.
pub fn inside_convex(quad: &Quad, p: [f32; 2]) -> bool {
    let mut sign = 0.0f32;
    for i in 0..4 {
        let c = cross(quad[i], quad[(i + 1) % 4], p);
        if c != 0.0 {
            if sign != 0.0 && c.signum() != sign {
                return false;
            }
            sign = c.signum();
        }
    }
    true
}

/// The 3×3 perspective transform (row-major, h33 = 1) taking each `from[i]` to `to[i]`;
/// `None` when the points are degenerate.
pub fn homography(from: &Quad, to: &Quad) -> Option<[f64; 9]> {
    // Eight equations in the eight unknowns h11..h32, solved by Gaussian elimination.
    let mut m = [[0f64; 9]; 8];
    for i in 0..4 {
        let (x, y) = (from[i][0] as f64, from[i][1] as f64);
        let (u, v) = (to[i][0] as f64, to[i][1] as f64);
        m[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        m[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    for col in 0..8 {
        let pivot = (col..8).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        for row in 0..8 {
            if row != col {
                let factor = m[row][col] / m[col][col];
                let pivot_row = m[col];
                for (value, pivot_value) in m[row][col..].iter_mut().zip(&pivot_row[col..]) {
                    *value -= factor * pivot_value;
                }
            }
        }
    }
    let h: Vec<f64> = (0..8).map(|i| m[i][8] / m[i][i]).collect();
    Some([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0])
}

pub fn apply(h: &[f64; 9], x: f64, y: f64) -> (f64, f64) {
    let w = h[6] * x + h[7] * y + h[8];
    (
        (h[0] * x + h[1] * y + h[2]) / w,
        (h[3] * x + h[4] * y + h[5]) / w,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn min_area_rect_of_an_axis_aligned_box_is_the_box() {
        let points = [
            [10.0, 5.0],
            [50.0, 5.0],
            [50.0, 25.0],
            [10.0, 25.0],
            [30.0, 15.0],
        ];
        let rect = min_area_rect(&points).unwrap();
        assert!(close(rect.width * rect.height, 800.0));
        assert!(close(rect.center[0], 30.0) && close(rect.center[1], 15.0));
        assert!(close(rect.shorter_side(), 20.0));
    }

    #[test]
    fn min_area_rect_follows_a_rotated_box() {
        let angle = 0.3f32;
        let (c, s) = (angle.cos(), angle.sin());
        let rotate = |x: f32, y: f32| [100.0 + x * c - y * s, 50.0 + x * s + y * c];
        let points = [
            rotate(-40.0, -10.0),
            rotate(40.0, -10.0),
            rotate(40.0, 10.0),
            rotate(-40.0, 10.0),
        ];
        let rect = min_area_rect(&points).unwrap();
        assert!(close(rect.width.max(rect.height), 80.0), "{rect:?}");
        assert!(close(rect.shorter_side(), 20.0));
        let grown = rect.grown(5.0);
        assert!(close(grown.shorter_side(), 30.0));
    }

    #[test]
    fn corners_are_ordered_clockwise_from_top_left() {
        let quad = order_corners([[50.0, 25.0], [10.0, 5.0], [10.0, 25.0], [50.0, 5.0]]);
        assert_eq!(quad, [[10.0, 5.0], [50.0, 5.0], [50.0, 25.0], [10.0, 25.0]]);
        assert!(inside_convex(&quad, [30.0, 15.0]));
        assert!(!inside_convex(&quad, [60.0, 15.0]));
    }

    #[test]
    fn homography_maps_the_control_points() {
        let from = [[10.0, 20.0], [110.0, 30.0], [105.0, 70.0], [12.0, 60.0]];
        let to = [[0.0, 0.0], [100.0, 0.0], [100.0, 40.0], [0.0, 40.0]];
        let h = homography(&from, &to).unwrap();
        for i in 0..4 {
            let (u, v) = apply(&h, from[i][0] as f64, from[i][1] as f64);
            assert!((u - to[i][0] as f64).abs() < 1e-6 && (v - to[i][1] as f64).abs() < 1e-6);
        }
        assert!(homography(&[[0.0, 0.0]; 4], &to).is_none());
    }
}
