//! Evidence: jobs and their artifacts, the evidence bundles signed over them, and the
//! retention policy that purges artifact bytes (never manifests or the log).

pub mod bundle;
pub mod job;
pub mod retention;
