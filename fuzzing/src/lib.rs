//! Fuzz target bodies for every ShadowMesh parser, the fixed network they run in, and the
//! generator of the seed corpus.
//!
//! - [`targets`]: one function per target; `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) and
//!   the stable replay test (`tests/replay.rs`) call the very same functions.
//! - [`fixtures`]: the committed CA, node keys and certificates, loaded once per process.
//! - [`seal`]: seals fuzzer-chosen M1 payloads so the payload parser is reachable.
//! - [`seeds`]: real, valid inputs for every target (`examples/gen_corpus.rs` writes them).
//!
//! This crate owns no protocol logic and must never change what it tests: it only calls public
//! APIs. See `docs/fuzzing.md` for how to run, extend and regenerate.

pub mod fixtures;
pub mod seal;
pub mod seeds;
pub mod targets;
