//! The `shadowmesh` tool's library: the pieces the CLI, the demo and the root-only tests share.
#![forbid(unsafe_code)]

pub mod attack;
pub mod bench;
pub mod demo;
pub mod impair;
pub mod keys;
pub mod natlab;
pub mod natprobe;
pub mod netns;
pub mod selfcheck;
pub mod static_cfg;
pub mod status;
pub mod up;
