//! A failure told in one line: an error's message, then its causes, each said once.
//!
//! Error layers often repeat what they wrap (reqwest's "error sending request" carries no
//! reason; tonic's "transport error" neither; some wrappers quote their cause), while
//! the innermost cause is what tells a refused connection from a bad certificate. Log
//! lines and job results show one string, so the chain is joined here, the same way for
//! every crate.

/// `text`, then each error of `causes` whose message it does not already say, joined
/// with ": " (an empty `text` starts with the first cause).
pub fn with_causes<'a>(
    mut text: String,
    causes: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    for cause in causes {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error layer: its message, and the layer it wraps.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|inner| inner as _)
        }
    }

    #[test]
    fn each_cause_is_said_once_in_order() {
        let inner = Layer("connection refused", None);
        let quoting = Layer("dial: connection refused", Some(Box::new(inner)));
        let outer = Layer("transport error", Some(Box::new(quoting)));
        let causes = std::iter::successors(std::error::Error::source(&outer), |e| e.source());
        assert_eq!(
            with_causes(outer.to_string(), causes),
            "transport error: dial: connection refused"
        );
        assert_eq!(
            with_causes(String::new(), [&outer as &dyn std::error::Error]),
            "transport error"
        );
    }
}
