//! Frame slab: the packet memory of one worker, shared with the kernel through io_uring.
//!
//! Owns: one page-aligned anonymous mapping cut into fixed-size frames, and a free list that hands
//! frames out and takes them back. Must never allocate after [`Slab::new`], never hand the
//! same frame out twice, and never be shared between threads (one slab per worker; the type is
//! `Send` but not `Sync`).
//!
//! The io_uring backend registers [`Slab::base_ptr`]/[`Slab::len`] as a provided-buffer ring or
//! as fixed buffers; see the contract on [`Slab::base_ptr`].

use std::ptr::NonNull;

use crate::tun::PlatformError;

/// Alignment of the whole slab: one page, so io_uring can register it and frames never share a
/// page with unrelated heap data.
pub const SLAB_ALIGN: usize = 4096;
/// Frames are rounded up to a cache line so two frames never share one (false sharing with the
/// kernel's DMA/copy and between the encrypt and send stages).
pub const FRAME_ALIGN: usize = 64;
/// Largest frame size accepted (1 MiB); a 64 KiB super-packet plus headroom fits easily.
pub const MAX_FRAME_SIZE: usize = 1 << 20;
/// Largest frame count accepted; keeps ids in a `u32` with room to spare.
pub const MAX_FRAMES: usize = 1 << 24;

/// Opaque handle of one frame of a [`Slab`]. Only the slab that issued it may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameId(u32);

impl FrameId {
    /// The frame's index in its slab (the io_uring buffer id when the slab backs a buffer ring).
    #[must_use]
    pub fn index(self) -> u32 {
        self.0
    }
}

/// A fixed pool of equally sized, page-aligned frames with an allocation-free free list.
pub struct Slab {
    base: NonNull<u8>,
    /// Length of the mapping in bytes.
    bytes: usize,
    frame_size: usize,
    frames: usize,
    /// Stack of free frame indices; capacity reserved up front so `give` never reallocates.
    free: Vec<u32>,
    /// One bit per frame: set while the frame is handed out. Guards against double frees.
    in_use: Vec<u64>,
}

// SAFETY: the slab exclusively owns its mapping (no aliasing pointers are kept elsewhere by
// this type), so moving it to another thread moves the ownership with it. It is deliberately
// not `Sync`: one worker owns it.
unsafe impl Send for Slab {}

impl std::fmt::Debug for Slab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("frame_size", &self.frame_size)
            .field("frames", &self.frames)
            .field("free", &self.free.len())
            .finish()
    }
}

impl Slab {
    /// Maps `frames` frames of `frame_size` bytes (rounded up to [`FRAME_ALIGN`]), zeroed, in
    /// one anonymous page-aligned mapping. All frames start free.
    ///
    /// The mapping (rather than the heap) makes creation cheap and lets the kernel commit pages
    /// only when a frame is first touched: a 1024 x 64 KiB slab per worker costs nothing until
    /// traffic needs it.
    ///
    /// # Errors
    /// [`PlatformError::BadSlabGeometry`] for zero or oversize geometry,
    /// [`PlatformError::SlabAlloc`] when the allocator refuses.
    pub fn new(frame_size: usize, frames: usize) -> Result<Slab, PlatformError> {
        let bad = || PlatformError::BadSlabGeometry { frame_size, frames };
        if frame_size == 0 || frame_size > MAX_FRAME_SIZE || frames == 0 || frames > MAX_FRAMES {
            return Err(bad());
        }
        let rounded = frame_size.div_ceil(FRAME_ALIGN) * FRAME_ALIGN;
        let bytes = rounded
            .checked_mul(frames)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(bad)?;
        // SAFETY: an anonymous private mapping of non-zero length at an address of the
        // kernel's choosing; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANON,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(PlatformError::SlabAlloc { bytes });
        }
        let base = NonNull::new(raw.cast::<u8>()).ok_or(PlatformError::SlabAlloc { bytes })?;
        // Hand out low indices first: pop() takes from the end, so push in reverse.
        let free: Vec<u32> = (0..frames as u32).rev().collect();
        let in_use = vec![0u64; frames.div_ceil(64)];
        Ok(Slab {
            base,
            bytes,
            frame_size: rounded,
            frames,
            free,
            in_use,
        })
    }

    /// Size of every frame in bytes (the requested size rounded up to [`FRAME_ALIGN`]).
    #[must_use]
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Number of frames in the slab.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Number of frames currently free.
    #[must_use]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free frame, or `None` when all are handed out (back-pressure, not an error).
    #[inline]
    pub fn take(&mut self) -> Option<FrameId> {
        let idx = self.free.pop()?;
        self.set_in_use(idx, true);
        Some(FrameId(idx))
    }

    /// Returns a frame to the free list.
    ///
    /// Giving back a frame that is already free is a bug in the caller: it panics in debug
    /// builds and is ignored in release builds (so the frame is never handed out twice).
    #[inline]
    pub fn give(&mut self, id: FrameId) {
        let was_in_use = self.is_in_use(id.0);
        debug_assert!(
            was_in_use,
            "double free of frame {} (or id from another slab)",
            id.0
        );
        if !was_in_use {
            return;
        }
        self.set_in_use(id.0, false);
        // Cannot reallocate: capacity == frames and at most `frames` ids are ever free.
        self.free.push(id.0);
    }

    /// Maps a kernel-reported buffer index (e.g. an io_uring buffer id) back to a frame id,
    /// or `None` when it is out of range for this slab.
    #[must_use]
    pub fn frame_id(&self, index: u32) -> Option<FrameId> {
        ((index as usize) < self.frames).then_some(FrameId(index))
    }

    /// Whether `id` is currently handed out.
    #[must_use]
    pub fn is_taken(&self, id: FrameId) -> bool {
        self.is_in_use(id.0)
    }

    /// The bytes of a frame.
    ///
    /// # Panics
    /// If `id` came from a different, larger slab (a programming error, never input-derived).
    #[must_use]
    pub fn frame(&self, id: FrameId) -> &[u8] {
        let off = self.offset(id);
        // SAFETY: `offset` checked that [off, off + frame_size) lies inside the mapping,
        // which is initialised (anonymous mappings read as zero) and lives as long as `self`; the shared
        // borrow of `self` prevents `frame_mut` from aliasing it.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), self.frame_size) }
    }

    /// The bytes of a frame, writable.
    ///
    /// # Panics
    /// If `id` came from a different, larger slab (a programming error, never input-derived).
    #[must_use]
    pub fn frame_mut(&mut self, id: FrameId) -> &mut [u8] {
        let off = self.offset(id);
        // SAFETY: as in `frame`; the exclusive borrow of `self` makes this the only live
        // reference into the slab.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), self.frame_size) }
    }

    /// Start of the slab memory, for registering it with the kernel (io_uring provided-buffer
    /// ring or fixed buffers). Frame `i` starts at `base_ptr() + i * frame_size()`.
    ///
    /// # Contract for the caller (the io_uring backend)
    /// - The pointer stays valid until the slab is dropped; the ring must be unregistered (or
    ///   torn down and all its operations completed or cancelled-and-reaped) before that.
    /// - The kernel may write only frames the backend has *taken* and put into the ring, and
    ///   the backend must not call [`Slab::frame`]/[`Slab::frame_mut`] on such a frame until
    ///   its completion was reaped; otherwise the kernel and Rust alias the same bytes.
    /// - A frame is given back only after the kernel is done with it.
    #[must_use]
    pub fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Total length of the slab memory in bytes (`frames() * frame_size()`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Always false: a slab has at least one frame. Present for the `len`/`is_empty` pair.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn offset(&self, id: FrameId) -> usize {
        let i = id.0 as usize;
        assert!(
            i < self.frames,
            "frame id {i} out of range for a slab of {}",
            self.frames
        );
        i * self.frame_size
    }

    fn is_in_use(&self, idx: u32) -> bool {
        let i = idx as usize;
        self.in_use
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    fn set_in_use(&mut self, idx: u32, on: bool) {
        let i = idx as usize;
        if let Some(w) = self.in_use.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            if on {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `base`/`bytes` are exactly the mapping made in `new`, unmapped once; no
        // borrow of the slab (hence of a frame) can outlive `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn geometry_is_rounded_and_aligned() {
        let s = Slab::new(65536 + 100, 4).unwrap();
        assert_eq!(s.frame_size(), 65536 + 128);
        assert_eq!(s.len(), 4 * (65536 + 128));
        assert_eq!(s.base_ptr() as usize % SLAB_ALIGN, 0);
        assert_eq!(s.free_count(), 4);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        assert!(matches!(
            Slab::new(0, 4),
            Err(PlatformError::BadSlabGeometry { .. })
        ));
        assert!(matches!(
            Slab::new(64, 0),
            Err(PlatformError::BadSlabGeometry { .. })
        ));
        assert!(matches!(
            Slab::new(MAX_FRAME_SIZE + 1, 1),
            Err(PlatformError::BadSlabGeometry { .. })
        ));
        assert!(matches!(
            Slab::new(64, MAX_FRAMES + 1),
            Err(PlatformError::BadSlabGeometry { .. })
        ));
    }

    #[test]
    fn exhaustion_returns_none_and_frames_are_disjoint() {
        let mut s = Slab::new(100, 3).unwrap();
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        let c = s.take().unwrap();
        assert!(s.take().is_none());
        s.frame_mut(a).fill(1);
        s.frame_mut(b).fill(2);
        s.frame_mut(c).fill(3);
        assert!(s.frame(a).iter().all(|&x| x == 1));
        assert!(s.frame(b).iter().all(|&x| x == 2));
        assert!(s.frame(c).iter().all(|&x| x == 3));
        s.give(b);
        assert_eq!(s.take(), Some(b));
    }

    #[test]
    fn frame_id_maps_only_in_range() {
        let s = Slab::new(64, 8).unwrap();
        assert_eq!(s.frame_id(7).map(FrameId::index), Some(7));
        assert_eq!(s.frame_id(8), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "double free")]
    fn double_free_panics_in_debug() {
        let mut s = Slab::new(64, 2).unwrap();
        let a = s.take().unwrap();
        s.give(a);
        s.give(a);
    }

    #[test]
    fn give_does_not_reallocate() {
        let mut s = Slab::new(64, 16).unwrap();
        let cap = s.free.capacity();
        let ids: Vec<_> = std::iter::from_fn(|| s.take()).collect();
        for id in ids {
            s.give(id);
        }
        assert_eq!(s.free.capacity(), cap);
        assert_eq!(s.free_count(), 16);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take,
        /// Give back the n-th (mod count) frame currently held.
        Give(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Take), any::<usize>().prop_map(Op::Give)]
    }

    proptest! {
        /// Model: a set of held ids. No frame is handed out twice, `None` only when all are
        /// held, and after returning everything every frame is free again.
        #[test]
        fn matches_model(frames in 1usize..40, ops in proptest::collection::vec(op(), 0..300)) {
            let mut s = Slab::new(64, frames).unwrap();
            let mut held: BTreeSet<FrameId> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Take => match s.take() {
                        Some(id) => {
                            prop_assert!((id.index() as usize) < frames);
                            prop_assert!(held.insert(id), "frame {:?} handed out twice", id);
                            // A frame written now must not be visible through any other frame.
                            s.frame_mut(id).fill(id.index() as u8);
                        }
                        None => prop_assert_eq!(held.len(), frames),
                    },
                    Op::Give(n) => {
                        if !held.is_empty() {
                            let id = *held.iter().nth(n % held.len()).unwrap();
                            prop_assert!(s.frame(id).iter().all(|&b| b == id.index() as u8));
                            held.remove(&id);
                            s.give(id);
                        }
                    }
                }
                prop_assert_eq!(s.free_count(), frames - held.len());
                for id in &held {
                    prop_assert!(s.is_taken(*id));
                }
            }
            for id in std::mem::take(&mut held) {
                s.give(id);
            }
            prop_assert_eq!(s.free_count(), frames);
            let mut all = BTreeSet::new();
            while let Some(id) = s.take() {
                prop_assert!(all.insert(id));
            }
            prop_assert_eq!(all.len(), frames);
        }
    }
}
