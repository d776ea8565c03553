//! Typed algorithm settings: what an algorithm can be configured with, declared as a type.
//!
//! A settings type derives [`clap::Args`], each field with its environment variable
//! (`env = "PLUGWORKER_…"`) and a long flag, and is registered with
//! [`register_settings!`](crate::register_settings) beside it. The kit flattens every
//! registered type into the runner's own command line, so `--help` lists them under
//! their heading with their variables and defaults, parses them with the runner's flags
//! at start, before anything loads, and hands them to the algorithms typed:
//! [`LoadContext::settings`](crate::LoadContext::settings).
//!
//! ```ignore
//! #[derive(Clone, Debug, clap::Args)]
//! pub struct OcrSettings {
//!     /// Lines read with less confidence are dropped.
//!     #[arg(long = "ocr-min-confidence", env = "PLUGWORKER_OCR_MIN_CONFIDENCE",
//!           default_value_t = 0.5, value_parser = plugworker_kit::settings::value::<f32>())]
//!     pub min_confidence: f32,
//! }
//! plugworker_kit::register_settings!(OcrSettings, "OCR");
//! ```
//!
//! Values are parsed by [`value`]: an empty variable counts as unset (deployments template
//! variables and leave some empty), and any other value that does not parse stops the
//! runner with the variable's name, its value and what it accepts, so a typo never falls
//! back to a default silently.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::sync::Arc;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// One settings type in the binary, produced by [`register_settings!`](crate::register_settings).
pub struct SettingsEntry {
    /// The heading its flags are listed under in `--help`.
    pub heading: &'static str,
    pub(crate) type_id: fn() -> TypeId,
    pub(crate) type_name: fn() -> &'static str,
    pub(crate) augment: fn(clap::Command) -> clap::Command,
    pub(crate) parse: fn(&clap::ArgMatches) -> Result<Arc<dyn Any + Send + Sync>, clap::Error>,
}

inventory::collect!(SettingsEntry);

impl SettingsEntry {
    /// The registration of `T`. `const` so it can live in a link-time registry.
    pub const fn of<T: clap::Args + Send + Sync + 'static>(heading: &'static str) -> Self {
        Self {
            heading,
            type_id: TypeId::of::<T>,
            type_name: std::any::type_name::<T>,
            augment: T::augment_args,
            parse: parse_erased::<T>,
        }
    }
}

fn parse_erased<T: clap::Args + Send + Sync + 'static>(
    matches: &clap::ArgMatches,
) -> Result<Arc<dyn Any + Send + Sync>, clap::Error> {
    Ok(Arc::new(T::from_arg_matches(matches)?))
}

/// Registers a settings type with the kit, with the heading of its flags in `--help`:
///
/// ```ignore
/// plugworker_kit::register_settings!(MemeSettings, "meme_classifier");
/// ```
#[macro_export]
macro_rules! register_settings {
    ($settings:ty, $heading:expr) => {
        $crate::inventory::submit! { $crate::settings::SettingsEntry::of::<$settings>($heading) }
    };
}

/// Adds every registered settings type's flags to the runner's command, each type under
/// its own heading.
pub(crate) fn augment(mut command: clap::Command) -> clap::Command {
    for entry in entries() {
        command = augment_one(command, entry);
    }
    command.next_help_heading(None::<&str>)
}

/// Adds one settings type's flags under its heading. clap reads a variable that is set
/// but empty as a value; a setting takes it as unset instead (a deployment's template
/// leaves variables empty), so such an argument forgets its variable and keeps its
/// default.
fn augment_one(command: clap::Command, entry: &SettingsEntry) -> clap::Command {
    let own = (entry.augment)(clap::Command::new("settings"));
    let empty: Vec<clap::Id> = own
        .get_arguments()
        .filter(|arg| {
            arg.get_env().is_some_and(|name| {
                std::env::var_os(name)
                    .is_some_and(|value| value.to_string_lossy().trim().is_empty())
            })
        })
        .map(|arg| arg.get_id().clone())
        .collect();
    let mut command = (entry.augment)(command.next_help_heading(entry.heading));
    for id in empty {
        command = command.mut_arg(id, |arg| arg.env(None));
    }
    command
}

/// Every registered type, in heading order (so `--help` reads the same on every build).
fn entries() -> Vec<&'static SettingsEntry> {
    let mut entries: Vec<_> = inventory::iter::<SettingsEntry>.into_iter().collect();
    entries.sort_by_key(|entry| (entry.heading, (entry.type_name)()));
    entries
}

/// The parsed settings of every registered type, by type.
#[derive(Clone, Default)]
pub struct AlgorithmSettings {
    values: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for AlgorithmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlgorithmSettings")
            .field("types", &self.values.len())
            .finish()
    }
}

impl AlgorithmSettings {
    /// Reads every registered type from the runner's parsed command line (which includes
    /// the environment).
    pub(crate) fn from_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Self::from_entries(entries(), matches)
    }

    fn from_entries(
        entries: impl IntoIterator<Item = &'static SettingsEntry>,
        matches: &clap::ArgMatches,
    ) -> Result<Self, clap::Error> {
        let mut values = HashMap::new();
        for entry in entries {
            values.insert((entry.type_id)(), (entry.parse)(matches)?);
        }
        Ok(Self {
            values: Arc::new(values),
        })
    }

    /// These settings and `value`, set in code rather than parsed from flags: for a
    /// runner served in-process ([`crate::Runner`]), whose algorithms then read it with
    /// [`LoadContext::settings`](crate::LoadContext::settings) (it replaces a value of the
    /// same type).
    pub fn with<T: Any + Send + Sync>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.values).insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The settings of type `T`, if it is registered.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// A type a setting can have: how its text reads, and what it accepts (said to the
/// person who set it when a value does not read).
pub trait SettingValue: Clone + Send + Sync + 'static {
    /// What a value must look like.
    const ACCEPTED: &'static str;
    /// The value `text` (trimmed, not empty) stands for, or `None` if it is not one.
    fn read(text: &str) -> Option<Self>;
}

impl SettingValue for usize {
    const ACCEPTED: &'static str = "a whole number, 0 or more";
    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl SettingValue for f32 {
    const ACCEPTED: &'static str = "a finite decimal number, such as 0.5";
    fn read(text: &str) -> Option<Self> {
        // `f32::from_str` also takes "NaN" and "inf": never a value anyone meant.
        text.parse().ok().filter(|value: &f32| value.is_finite())
    }
}

impl SettingValue for String {
    const ACCEPTED: &'static str = "any text";
    fn read(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

impl SettingValue for std::time::Duration {
    const ACCEPTED: &'static str = "a duration, such as 5s or 250ms";
    fn read(text: &str) -> Option<Self> {
        humantime::parse_duration(text).ok()
    }
}

impl SettingValue for std::path::PathBuf {
    const ACCEPTED: &'static str = "a path";
    fn read(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

/// The value parser of a setting of type `T` (`value_parser = value::<T>()`).
pub fn value<T: SettingValue>() -> SettingParser<T> {
    SettingParser(PhantomData)
}

/// See [`value`].
#[derive(Clone, Copy, Debug)]
pub struct SettingParser<T>(PhantomData<fn() -> T>);

impl<T: SettingValue> TypedValueParser for SettingParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        raw: &OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |shown: String| {
            let name = arg
                .map(|arg| {
                    let flag = arg
                        .get_long()
                        .map(|long| format!("--{long}"))
                        .unwrap_or_else(|| arg.get_id().to_string());
                    match arg.get_env() {
                        Some(env) => format!("{} (or {flag})", env.to_string_lossy()),
                        None => flag,
                    }
                })
                .unwrap_or_else(|| "a setting".into());
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("{name}={shown}: expected {}\n", T::ACCEPTED),
            )
            .with_cmd(command)
        };
        let Some(text) = raw.to_str() else {
            return Err(refuse(format!(
                "{:?} (not valid UTF-8)",
                raw.to_string_lossy()
            )));
        };
        T::read(text.trim()).ok_or_else(|| refuse(format!("{text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};
    use std::ffi::OsString;

    #[derive(Clone, Debug, clap::Args)]
    struct Example {
        /// Threads.
        #[arg(long = "example-threads", env = "KIT_TEST_THREADS", default_value_t = 7, value_parser = value::<usize>())]
        threads: usize,
        /// A score.
        #[arg(long = "example-score", env = "KIT_TEST_SCORE", default_value_t = 0.5, value_parser = value::<f32>())]
        score: f32,
        /// A name.
        #[arg(long = "example-name", env = "KIT_TEST_NAME", value_parser = value::<String>())]
        name: Option<String>,
    }

    static EXAMPLE: SettingsEntry = SettingsEntry::of::<Example>("Example settings");

    /// Parses `args` with `env` set (the variables are unique to each test).
    fn parse(args: &[&str], env: &[(&str, &OsStr)]) -> Result<Example, clap::Error> {
        for (name, value) in env {
            // SAFETY: each test uses its own variables, and nothing else reads them.
            unsafe { std::env::set_var(name, value) };
        }
        let command = augment_one(clap::Command::new("runner").no_binary_name(true), &EXAMPLE);
        let result = command
            .try_get_matches_from(args)
            .and_then(|matches| AlgorithmSettings::from_entries([&EXAMPLE], &matches));
        for (name, _) in env {
            // SAFETY: as above.
            unsafe { std::env::remove_var(name) };
        }
        Ok(result?.get::<Example>().unwrap().clone())
    }

    #[test]
    fn unset_or_empty_is_the_default_and_a_value_is_read() {
        let example = parse(&[], &[]).unwrap();
        assert_eq!((example.threads, example.score), (7, 0.5));
        assert_eq!(example.name, None);
        let example = parse(
            &["--example-score", "0.25"],
            &[
                ("KIT_TEST_THREADS", OsStr::new(" 4 ")),
                ("KIT_TEST_NAME", OsStr::new("")),
            ],
        )
        .unwrap();
        assert_eq!((example.threads, example.score), (4, 0.25));
        assert_eq!(example.name, None, "an empty variable is unset");
    }

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
        let error = parse(&[], &[("KIT_TEST_THREADS", OsStr::new("four"))])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "KIT_TEST_THREADS (or --example-threads)=\"four\": expected a whole number, 0 or more"
            ),
            "{error}"
        );
        for (variable, bad) in [
            ("KIT_TEST_THREADS", "-1"),
            ("KIT_TEST_SCORE", "NaN"),
            ("KIT_TEST_SCORE", "inf"),
        ] {
            let error = parse(&[], &[(variable, OsStr::new(bad))])
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("{variable} ")), "{error}");
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_not_the_default() {
        use std::os::unix::ffi::OsStringExt;
        let value = OsString::from_vec(vec![b'4', 0xff]);
        let error = parse(&[], &[("KIT_TEST_SCORE", &value)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("KIT_TEST_SCORE (or --example-score)="),
            "{error}"
        );
        assert!(error.contains("not valid UTF-8"), "{error}");
    }

    #[test]
    fn help_lists_each_setting_with_its_variable_under_its_heading() {
        let mut command = augment_one(clap::Command::new("runner"), &EXAMPLE);
        let help = command.render_long_help().to_string();
        assert!(help.contains("Example settings:"), "{help}");
        assert!(help.contains("[env: KIT_TEST_THREADS=]"), "{help}");
        assert!(help.contains("[default: 7]"), "{help}");
    }

    #[test]
    fn an_algorithm_gets_its_settings_typed_or_a_load_error_naming_the_type() {
        let command = augment_one(clap::Command::new("runner").no_binary_name(true), &EXAMPLE);
        let matches = command
            .try_get_matches_from(["--example-threads", "2"])
            .unwrap();
        let settings = AlgorithmSettings::from_entries([&EXAMPLE], &matches).unwrap();
        let context = crate::LoadContext::with(".".into(), settings, None);
        assert_eq!(context.settings::<Example>().unwrap().threads, 2);
        let error = context.settings::<String>().unwrap_err().to_string();
        assert!(error.contains("alloc::string::String"), "{error}");
        assert!(error.contains("register_settings!"), "{error}");
    }

    #[test]
    fn flags_parse_like_the_variables() {
        let example = Example::from_arg_matches(
            &Example::augment_args(clap::Command::new("r").no_binary_name(true))
                .try_get_matches_from(["--example-threads", "3"])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(example.threads, 3);
    }
}
