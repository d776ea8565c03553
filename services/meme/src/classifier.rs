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
        // runners-up, so candidates are distinct labels.
        let mut best: Vec<Candidate> = Vec::new();
        let mut position: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (template, score) in gallery.templates().iter().zip(scores) {
            match position.get(template.label.as_str()) {
                Some(&i) if best[i].score >= score => {}
                Some(&i) => {
                    best[i].score = score;
                    best[i].template = template.name.clone();
                }
                None => {
                    position.insert(&template.label, best.len());
                    best.push(Candidate {
                        label: template.label.clone(),
                        score,
                        template: template.name.clone(),
                    });
                }
            }
        }
        best.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.label.cmp(&b.label))
        });
        best.truncate(candidates.max(1));
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
