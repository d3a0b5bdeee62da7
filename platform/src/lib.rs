//! Everything OS-specific in ShadowMesh lives here: TUN devices, UDP socket options, the
//! io_uring backend, the portable poll backend, CPU pinning, and the frame slab whose memory
//! the kernel reads and writes.
//!
//! This is the only crate that says `libc`, `ioctl`, `io_uring` or `cfg(target_os)`; callers
//! get small safe types. Every `unsafe` block carries a `// SAFETY:` line.

pub mod ifaddrs;
pub mod io;
pub mod pin;
pub mod seqpacket;
pub mod signal;
pub mod slab;
pub mod tun;
pub mod udp;
