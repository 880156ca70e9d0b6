//! [`Secret`]: a value that must never reach a log. Its `Debug` prints `<redacted>`, so a struct
//! holding one can derive `Debug`; the value is read only through [`Secret::expose`], which
//! makes every use visible in review.

use std::fmt;

/// A secret value (password, key, shared secret). `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Returns the secret value, for the one place that uses it (a driver, a signature).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug)]
        #[allow(dead_code)] // only Debug reads the fields
        struct Config {
            user: String,
            password: Option<Secret<String>>,
        }
        let c = Config {
            user: "nexus".into(),
            password: Some(Secret::new("hunter2-very-secret".into())),
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("nexus"),
            "{shown}"
        );
        assert_eq!(
            c.password.as_ref().map(|s| s.expose().as_str()),
            Some("hunter2-very-secret")
        );
    }
}
