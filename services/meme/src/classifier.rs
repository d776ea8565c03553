//! Best template label for an image, or `unknown`.

use crate::embedder::{Embedder, EmbedderError};
use crate::gallery::Gallery;
use image::RgbImage;
use serde::Serialize;

/// The label given to images whose best match is below the threshold.
pub const UNKNOWN_LABEL: &str = "unknown";

/// One label's best match.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub label: String,
    /// Cosine similarity of the image to the label's closest template.
    pub score: f32,
    /// That template's file: the name it was added as (a versioned gallery), or its path
    /// relative to a read-only gallery folder.
    pub template: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// The best label, or [`UNKNOWN_LABEL`].
    pub label: String,
    /// The best label's score (also when it fell below the threshold).
    pub score: f32,
    /// Best first, one per label, the winner included.
    pub candidates: Vec<Candidate>,
}

pub struct MemeClassifier {
    embedder: Embedder,
    gallery: Gallery,
    threshold: f32,
}

impl MemeClassifier {
    pub fn new(embedder: Embedder, gallery: Gallery, threshold: f32) -> Self {
        Self {
            embedder,
            gallery,
            threshold,
        }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn gallery(&self) -> &Gallery {
        &self.gallery
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Embeds `image` and looks it up.
    pub fn classify(
        &self,
        image: &RgbImage,
        candidates: usize,
    ) -> Result<Classification, EmbedderError> {
        let embedding = self.embedder.embed(image)?;
        let _lookup = tracing::info_span!(
            "gallery.lookup",
            plugworker.templates = self.gallery.templates().len()
        )
        .entered();
        Ok(self.lookup(&embedding, candidates))
    }

    /// The lookup alone, for an embedding already computed.
    pub fn lookup(&self, embedding: &[f32], candidates: usize) -> Classification {
        rank(&self.gallery, embedding, self.threshold, candidates)
    }
}

/// Labels by their best template's similarity to `embedding`, and the verdict.
pub fn rank(
    gallery: &Gallery,
    embedding: &[f32],
    threshold: f32,
    candidates: usize,
) -> Classification {
    {
        let scores = gallery.index().scores(embedding);
        // Best template per label: a label with many templates must not crowd out the
        // runners-up, so candidates are distinct labels. Rows are kept as indices and only
        // the candidates returned are copied: at 10,000 labels, copying every label's name
        // per lookup cost more than the scan.
        let mut by_label: std::collections::HashMap<&str, (f32, usize)> =
            std::collections::HashMap::with_capacity(scores.len());
        for (row, (template, score)) in gallery.templates().iter().zip(scores).enumerate() {
            by_label
                .entry(template.label.as_str())
                .and_modify(|best| {
                    if score > best.0 {
                        *best = (score, row);
                    }
                })
                .or_insert((score, row));
        }
        let mut ranked: Vec<(&str, f32, usize)> = by_label
            .into_iter()
            .map(|(label, (score, row))| (label, score, row))
            .collect();
        let order = |a: &(&str, f32, usize), b: &(&str, f32, usize)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0))
        };
        let keep = candidates.max(1);
        if ranked.len() > keep {
            ranked.select_nth_unstable_by(keep - 1, order);
            ranked.truncate(keep);
        }
        ranked.sort_by(order);
        let best: Vec<Candidate> = ranked
            .into_iter()
            .map(|(label, score, row)| Candidate {
                label: label.to_string(),
                score,
                template: gallery.templates()[row].name.clone(),
            })
            .collect();
        let (label, score) = match best.first() {
            Some(top) if top.score >= threshold => (top.label.clone(), top.score),
            Some(top) => (UNKNOWN_LABEL.to_string(), top.score),
            None => (UNKNOWN_LABEL.to_string(), 0.0),
        };
        Classification {
            label,
            score,
            candidates: best,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddingIndex, Template};

    fn gallery() -> Gallery {
        let template = |label: &str, file: &str| Template {
            label: label.into(),
            file: file.into(),
            sha256: String::new(),
            name: file.into(),
        };
        let mut index = EmbeddingIndex::new(3);
        for row in [
            [1.0, 0.0, 0.0],
            [0.8, 0.6, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ] {
            index.push(&row);
        }
        Gallery::from_parts(
            vec![
                template("drake", "drake/a.jpg"),
                template("drake", "drake/b.jpg"),
                template("doge", "doge.jpg"),
                template("cat", "cat.jpg"),
            ],
            index,
        )
    }

    #[test]
    fn candidates_are_distinct_labels_scored_by_their_best_template() {
        let result = rank(&gallery(), &[0.6, 0.8, 0.0], 0.5, 3);
        assert_eq!(result.label, "drake");
        assert!((result.score - 0.96).abs() < 1e-6);
        let labels: Vec<_> = result
            .candidates
            .iter()
            .map(|c| (c.label.as_str(), c.template.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("drake", "drake/b.jpg"),
                ("doge", "doge.jpg"),
                ("cat", "cat.jpg")
            ]
        );
        assert_eq!(
            rank(&gallery(), &[0.6, 0.8, 0.0], 0.5, 1).candidates.len(),
            1
        );
    }

    #[test]
    fn below_the_threshold_the_answer_is_unknown_with_the_score_kept() {
        let result = rank(&gallery(), &[0.5, 0.5, 0.70710677], 0.8, 2);
        assert_eq!(result.label, UNKNOWN_LABEL);
        assert!((result.score - 0.70710677).abs() < 1e-6);
        assert_eq!(result.candidates[0].label, "cat");
    }
}
