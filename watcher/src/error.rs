//! watcher's errors: one `thiserror` enum per layer.
//!
//! Messages are one sentence naming the file, line or missing thing; a layer that adds what it
//! was doing to a lower error ([`Failed`], [`Doing::doing`]) keeps the lower error as its
//! `source`, so `watcher: {:#}` prints the whole chain, outermost first.

use std::fmt;

/// What watcher was doing when something below it failed; the failure is the `source`.
/// Displays only what was being done (as anyhow's `context`): the chain is printed by
/// [`chain`] or the CLI.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct Failed {
    pub doing: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl Failed {
    pub fn new(doing: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Failed {
        Failed { doing: doing.into(), source: Box::new(source) }
    }
}

/// Adds what was being done to a failure: `.doing(|| format!("writing {}", p.display()))?`.
pub trait Doing<T> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failed>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T, Failed> {
        self.map_err(|e| Failed { doing: what(), source: Box::new(e) })
    }
}

/// The whole chain of an error, outermost first, separated by `: ` (as `anyhow`'s `{:#}`):
/// for log lines that must say why, not only what.
pub fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut src = self.0.source();
            while let Some(s) = src {
                write!(f, ": {s}")?;
                src = s.source();
            }
            Ok(())
        }
    }
    Chain(e)
}
