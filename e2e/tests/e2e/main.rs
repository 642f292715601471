//! The end-to-end tests, in one test binary: each binary embeds the host
//! and wadm, and linking one takes about a minute.

mod common;
mod lifecycle;
mod messaging;
mod readme;
mod startup;
mod wadm;
mod wadm_manifest;
mod wash;
mod wit_copy;
