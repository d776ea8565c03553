//! `language_detection`: which language a text is written in.
//!
//! Uses `whatlang` (pure Rust, trigram and script based, 69 languages, no model files):
//! fast enough to need no blocking pool for the text sizes the schema allows.

use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest text accepted, in characters. Detection needs a sentence or two; a cap keeps
/// one job from monopolising a runner.
const MAX_CHARS: usize = 100_000;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The text whose language to detect.
    #[schemars(length(min = 1, max = 100_000))]
    pub text: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// ISO 639-1 code where the language has one (e.g. `en`), ISO 639-3 otherwise.
    pub language: String,
    /// ISO 639-3 code (e.g. `eng`).
    pub iso639_3: String,
    /// English name of the language.
    pub name: String,
    /// Writing system the text uses (e.g. `Latin`).
    pub script: String,
    /// Detector confidence from 0 to 1.
    pub confidence: f64,
    /// Whether the detector considers the answer reliable.
    pub reliable: bool,
}

pub struct LanguageDetection;

impl Algorithm for LanguageDetection {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "language_detection";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Detects the language of a text (69 languages, whatlang).";

    fn load(_context: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self)
    }

    async fn run(&self, input: Input, _context: &RunContext) -> Result<Output, RunError> {
        if input.text.trim().is_empty() {
            return Err(RunError::InvalidInput(
                "text is empty or only whitespace".into(),
            ));
        }
        if input.text.chars().count() > MAX_CHARS {
            return Err(RunError::InvalidInput(format!(
                "text is longer than {MAX_CHARS} characters"
            )));
        }
        let info = whatlang::detect(&input.text).ok_or_else(|| {
            RunError::Unprocessable(
                "no language could be detected: the text has no letters of a known script".into(),
            )
        })?;
        let iso639_3 = info.lang().code();
        Ok(Output {
            language: iso639_1(iso639_3).unwrap_or(iso639_3).to_string(),
            iso639_3: iso639_3.to_string(),
            name: info.lang().eng_name().to_string(),
            script: info.script().name().to_string(),
            confidence: info.confidence(),
            reliable: info.is_reliable(),
        })
    }
}

plugworker_kit::register_algorithm!(LanguageDetection);

/// ISO 639-1 codes of the languages whatlang detects.
fn iso639_1(iso639_3: &str) -> Option<&'static str> {
    Some(match iso639_3 {
        "afr" => "af",
        "aka" => "ak",
        "amh" => "am",
        "ara" => "ar",
        "aze" => "az",
        "bel" => "be",
        "ben" => "bn",
        "bul" => "bg",
        "cat" => "ca",
        "ces" => "cs",
        "cmn" => "zh",
        "dan" => "da",
        "deu" => "de",
        "ell" => "el",
        "eng" => "en",
        "epo" => "eo",
        "est" => "et",
        "fin" => "fi",
        "fra" => "fr",
        "guj" => "gu",
        "heb" => "he",
        "hin" => "hi",
        "hrv" => "hr",
        "hun" => "hu",
        "hye" => "hy",
        "ind" => "id",
        "ita" => "it",
        "jav" => "jv",
        "jpn" => "ja",
        "kan" => "kn",
        "kat" => "ka",
        "khm" => "km",
        "kor" => "ko",
        "lat" => "la",
        "lav" => "lv",
        "lit" => "lt",
        "mal" => "ml",
        "mar" => "mr",
        "mkd" => "mk",
        "mya" => "my",
        "nep" => "ne",
        "nld" => "nl",
        "nob" => "nb",
        "ori" => "or",
        "pan" => "pa",
        "pes" => "fa",
        "pol" => "pl",
        "por" => "pt",
        "ron" => "ro",
        "rus" => "ru",
        "sin" => "si",
        "slk" => "sk",
        "slv" => "sl",
        "sna" => "sn",
        "spa" => "es",
        "srp" => "sr",
        "swe" => "sv",
        "tam" => "ta",
        "tel" => "te",
        "tgl" => "tl",
        "tha" => "th",
        "tuk" => "tk",
        "tur" => "tr",
        "ukr" => "uk",
        "urd" => "ur",
        "uzb" => "uz",
        "vie" => "vi",
        "yid" => "yi",
        "zul" => "zu",
        _ => return None,
    })
}
