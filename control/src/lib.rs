//! The ShadowMesh control plane: identities and certificates, post-quantum handshakes, the
//! control transport, and the hand-off of session keys to the dataplane.
//!
//! Protocol logic is sans-IO: functions of (state, input bytes, now) returning outputs.
#![forbid(unsafe_code)]
