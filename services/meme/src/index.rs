//! Exact nearest-neighbour search by cosine similarity over a flat matrix.
//!
//! Galleries hold tens to tens of thousands of templates; a brute-force scan of
//! 10 000 × 512 floats is a few milliseconds (see `docs/benchmarks.md`), well under the
//! cost of one embedding, so an approximate index would add error for no gain.

/// One template's similarity to a query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row of the template in the index.
    pub row: usize,
    /// Cosine similarity, -1 to 1.
    pub score: f32,
}

/// Row-major matrix of L2-normalised embeddings.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingIndex {
    dim: usize,
    rows: Vec<f32>,
}

impl EmbeddingIndex {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            rows: Vec::new(),
        }
    }

    /// `count` rows of zeros, to be filled with [`EmbeddingIndex::row_mut`]: one allocation
    /// of the final size, so a reload never holds a second copy of the rows it assembles.
    pub fn zeroed(dim: usize, count: usize) -> Self {
        Self {
            dim,
            rows: vec![0.0; dim * count],
        }
    }

    /// Appends a row; `embedding` must have the index's width.
    pub fn push(&mut self, embedding: &[f32]) {
        assert_eq!(embedding.len(), self.dim, "embedding width");
        self.rows.extend_from_slice(embedding);
    }

    pub fn len(&self) -> usize {
        self.rows.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&self, row: usize) -> &[f32] {
        &self.rows[row * self.dim..(row + 1) * self.dim]
    }

    pub fn row_mut(&mut self, row: usize) -> &mut [f32] {
        &mut self.rows[row * self.dim..(row + 1) * self.dim]
    }

    /// Similarity of `query` to every row, in row order.
    pub fn scores(&self, query: &[f32]) -> Vec<f32> {
        assert_eq!(query.len(), self.dim, "query width");
        self.rows
            .chunks_exact(self.dim)
            .map(|row| dot(row, query))
            .collect()
    }

    /// The `k` most similar rows, best first.
    pub fn top(&self, query: &[f32], k: usize) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self
            .scores(query)
            .into_iter()
            .enumerate()
            .map(|(row, score)| Hit { row, score })
            .collect();
        let k = k.min(hits.len());
        if k == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits
    }
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_chunks, a_rest) = a.as_chunks::<8>();
    let (b_chunks, b_rest) = b.as_chunks::<8>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..8 {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let mut v = values.to_vec();
        crate::embedder::normalise(&mut v);
        v
    }

    #[test]
    fn top_returns_the_most_similar_rows_best_first() {
        let mut index = EmbeddingIndex::new(3);
        index.push(&unit(&[1.0, 0.0, 0.0]));
        index.push(&unit(&[0.0, 1.0, 0.0]));
        index.push(&unit(&[1.0, 1.0, 0.0]));
        let hits = index.top(&unit(&[1.0, 0.2, 0.0]), 2);
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), vec![0, 2]);
        assert!(hits[0].score > hits[1].score);
        assert!((index.top(&unit(&[0.0, 1.0, 0.0]), 1)[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn dot_matches_the_naive_sum_for_widths_that_are_not_multiples_of_eight() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..19).map(|i| (i as f32).sin()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn asking_for_more_rows_than_exist_returns_them_all() {
        let mut index = EmbeddingIndex::new(2);
        index.push(&[1.0, 0.0]);
        assert_eq!(index.top(&[1.0, 0.0], 5).len(), 1);
        assert!(EmbeddingIndex::new(2).top(&[1.0, 0.0], 5).is_empty());
    }
}
