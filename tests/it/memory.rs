//! The conformance suite on the in-memory fakes (the reference the real backends must match).

use crate::support;

crate::conformance_suite!(support::memory);
