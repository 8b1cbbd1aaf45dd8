//! The bench reports every failure as text with its context (`err("S3")`), so a failed
//! operation ends up in the report instead of aborting the run.

use std::fmt::Display;

pub fn text(e: impl Display) -> String {
    e.to_string()
}

pub fn err<E: Display>(context: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{context}: {e}")
}

pub fn name<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: Display,
{
    s.parse().map_err(|e| format!("{s}: {e}"))
}
