//! Which meme template an image uses.
//!
//! A meme is a known template image with captions, crops, banners and recompression on
//! top. Copy-detection embeddings (SSCD, docs/architecture.md §11) are trained to map exactly such
//! edits of one image close together and different images far apart, so recognising a
//! template is a nearest-neighbour lookup: embed the image ([`Embedder`]), compare it
//! with the embedded templates ([`Gallery`], [`EmbeddingIndex`]) by cosine similarity, and
//! answer the best label, or `unknown` below a threshold ([`MemeClassifier`]).
//! Adding a template publishes a new gallery version ([`GalleryStore`]); nothing is
//! retrained.

mod classifier;
mod embedder;
mod gallery;
mod index;
mod store;

pub use classifier::{Candidate, Classification, MemeClassifier, UNKNOWN_LABEL, rank};
pub use embedder::{EMBEDDING_DIM, Embedder, EmbedderError};
pub use gallery::{Gallery, GalleryError, LoadStats, Template, legacy_version};
pub use index::{EmbeddingIndex, Hit};
pub use store::{
    Change, GalleryStore, Location, Manifest, NEAR_DUPLICATE_SIMILARITY, NewImage, Published,
    SHORT_VERSION, StoreError, StoredTemplate, VersionInfo, short_version,
};
