//! CUDA kernels for Weft's GPU backend.
//!
//! [`CudaKernels`] is a handle on one GPU: it opens the driver and NVRTC at
//! run time (the crate builds and links without CUDA; a machine without a
//! driver gets [`CudaError::NoDriver`], never a panic), compiles the kernel
//! sources in `src/kernels/*.cu` for the device's architecture on first use
//! and caches them per process and device, and exposes each kernel as a
//! method that checks every size, index and buffer before it launches.
//!
//! Kernels: RMSNorm, RoPE (adjacent and NeoX pairs), SwiGLU, residual and
//! bias adds, row gathers, embedding lookup, (batched) GEMV over GGUF block
//! formats kept quantised on the device and their dequantisation for cuBLAS
//! SGEMM over many tokens, a paged KV cache in f32, f16 or FP8 E4M3 with
//! GQA attention of any query rows over it (decode and prefill), and top-k
//! with log-softmax over vocabulary rows.
//!
//! Deliberately not here: model structure, scheduling and KV-cache
//! allocation policy (the engine and `weft-backend-cuda` own those), and any
//! multi-stream or CUDA-graph machinery: every call is enqueued on the
//! device's default stream, in order.

mod attention;
mod blas;
mod disk_cache;
pub mod emulator;
mod error;
mod gemv;
mod layers;
mod runtime;
mod sample;
mod weights;

use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};

pub use disk_cache::set_cache_dir;
pub use attention::{AttentionPlan, AttentionRows, DecodeBatch, KvCacheShape, KvSlots, KvType, PagedKv};
pub use error::{CudaError, Result};
#[doc(hidden)]
pub use gemv::GemvPath;
pub use gemv::TokenIds;
pub use layers::{RopeLayout, RopeTable};
pub use runtime::compile_all_for_sm;
pub use sample::{MAX_K as MAX_TOP_K, PackedPicks, TopK, pack_picks};
pub use weights::{DeviceMatrix, WeightType};

/// The CUDA binding this crate is built on, for callers that need its types.
pub use cudarc;
/// Re-exported so callers can name buffer types without depending on cudarc.
pub use cudarc::driver::CudaSlice as DeviceBuffer;

use error::driver;
use runtime::{Device, ModuleKey, Source};

/// A captured CUDA graph ([`CudaKernels::capture`]), replayed on the stream
/// it was captured from.
pub struct Graph(cudarc::driver::CudaGraph);

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

// SAFETY: CUDA graph objects may be used from any thread as long as calls on
// one graph are serialised; `Graph` offers no shared (`Sync`) access, so its
// owner's `&mut`/move discipline serialises them.
unsafe impl Send for Graph {}

/// A handle on one GPU and its compiled kernels. Cheap to clone.
#[derive(Clone)]
pub struct CudaKernels {
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    blas: Arc<Mutex<Option<Arc<CudaBlas>>>>,
}

impl std::fmt::Debug for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKernels")
            .field("device", &self.dev)
            .finish()
    }
}

impl CudaKernels {
    /// Open device `ordinal`. Fails with an `is_unavailable()` error when
    /// the machine has no CUDA driver, no such device or no NVRTC.
    pub fn new(ordinal: usize) -> Result<Self> {
        let dev = Device::get(ordinal)?;
        let stream = dev.ctx.default_stream();
        Ok(CudaKernels {
            dev,
            stream,
            blas: Arc::new(Mutex::new(None)),
        })
    }

    /// Open device `ordinal` with a stream of this handle's own (a
    /// non-blocking stream, which CUDA graphs can capture; the legacy
    /// default stream of [`Self::new`] cannot be captured).
    ///
    /// cudarc's per-buffer event tracking is turned off for the device's
    /// context (it would record an event per buffer per launch, and inside
    /// a capture): every buffer of this handle must be used on its stream
    /// only, which the backend guarantees by owning its handle alone.
    pub fn with_own_stream(ordinal: usize) -> Result<Self> {
        let dev = Device::get(ordinal)?;
        // SAFETY: see above; buffers are never shared between this handle's
        // stream and another's.
        unsafe { dev.ctx.disable_event_tracking() };
        let stream = dev.ctx.new_stream().map_err(driver("creating a stream"))?;
        keep_pool_memory(&dev.ctx);
        Ok(CudaKernels {
            dev,
            stream,
            blas: Arc::new(Mutex::new(None)),
        })
    }

    /// Record what `launches` enqueues on this handle's stream as a CUDA
    /// graph instead of running it; replay it with `CudaGraph::launch`.
    /// Everything `launches` uses must stay allocated, at the same
    /// addresses, for as long as the graph is replayed, and it must not
    /// allocate, copy from host memory or synchronize.
    pub fn capture(&self, launches: impl FnOnce() -> Result<()>) -> Result<Graph> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(driver("beginning a graph capture"))?;
        let recorded = launches();
        // End the capture whatever happened, so the stream is usable again.
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(driver("ending a graph capture"))?;
        recorded?;
        graph.map(Graph).ok_or_else(|| CudaError::invalid("graph capture", "nothing was captured"))
    }

    /// Enqueue a graph from [`Self::capture`] on this handle's stream.
    pub fn replay(&self, graph: &Graph) -> Result<()> {
        graph.0.launch().map_err(driver("launching a CUDA graph"))
    }

    /// The device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// What the kernels are compiled for, e.g. "sm_90".
    pub fn arch(&self) -> String {
        format!("sm_{}", self.dev.sm)
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.dev.sm_count
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.dev.ctx
    }

    /// The stream every kernel of this handle is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for everything enqueued so far; reports asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("synchronizing the stream"))?;
        // Errors from calls that cannot return one (frees in Drop) are parked
        // in the context; surface them here.
        self.dev
            .ctx
            .check_err()
            .map_err(driver("an earlier free or event call"))
    }

    /// Copy a host slice into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream
            .clone_htod(host)
            .map_err(driver("copying host data to the device"))
    }

    /// Copy a device buffer into a new host vector (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream
            .clone_dtoh(buf)
            .map_err(driver("copying device data to the host"))
    }

    /// Copy elements `range` of a device buffer into a new host vector
    /// (waits for the stream).
    pub fn download_range<T: DeviceRepr + Default + Clone>(&self, buf: &CudaSlice<T>, range: std::ops::Range<usize>) -> Result<Vec<T>> {
        if range.start > range.end || range.end > buf.len() {
            return Err(CudaError::invalid(
                "download",
                format!("elements {range:?} asked of a buffer of {}", buf.len()),
            ));
        }
        let mut host = vec![T::default(); range.len()];
        self.stream
            .memcpy_dtoh(&buf.slice(range), &mut host)
            .map_err(driver("copying device data to the host"))?;
        Ok(host)
    }

    /// A new device buffer holding the first `len` elements of `buf`
    /// (copied on the device, in stream order).
    pub fn copy_prefix<T: DeviceRepr>(&self, buf: &CudaSlice<T>, len: usize) -> Result<CudaSlice<T>> {
        if len == 0 || len > buf.len() {
            return Err(CudaError::invalid(
                "copy",
                format!("a prefix of {len} elements asked of a buffer of {}", buf.len()),
            ));
        }
        // SAFETY: fully written by the copy below before anything reads it.
        let mut copy = unsafe { self.stream.alloc::<T>(len) }.map_err(driver("allocating device memory"))?;
        self.stream
            .memcpy_dtod(&buf.slice(0..len), &mut copy)
            .map_err(driver("copying on the device"))?;
        Ok(copy)
    }

    /// Copy `host` over the start of `dev` in place (the buffer keeps its
    /// address, so captured graphs read the new values).
    pub fn refill<T: DeviceRepr>(&self, dev: &mut CudaSlice<T>, host: &[T]) -> Result<()> {
        if host.len() > dev.len() {
            return Err(CudaError::invalid(
                "refill",
                format!("{} elements into a buffer of {}", host.len(), dev.len()),
            ));
        }
        self.stream
            .memcpy_htod(host, &mut dev.slice_mut(0..host.len()))
            .map_err(driver("copying host data to the device"))
    }

    /// A new zeroed device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros(len)
            .map_err(driver("allocating device memory"))
    }

    /// The kernel `name` of module `key`, compiled and loaded on first use.
    pub(crate) fn function(
        &self,
        source: Source,
        define: Option<&'static str>,
        name: &'static str,
    ) -> Result<CudaFunction> {
        self.dev
            .module(
                source,
                ModuleKey {
                    name: source.name,
                    define,
                },
            )?
            .function(name)
    }

    /// Reject buffers that live in another device's context.
    pub(crate) fn check_buf<T>(
        &self,
        op: &'static str,
        what: &str,
        buf: &CudaSlice<T>,
        need: usize,
    ) -> Result<()> {
        if !Arc::ptr_eq(buf.context(), &self.dev.ctx) {
            return Err(CudaError::invalid(
                op,
                format!("{what} was allocated on another device"),
            ));
        }
        if buf.len() < need {
            return Err(CudaError::invalid(
                op,
                format!(
                    "{what} holds {} elements; this call needs at least {need}",
                    buf.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Let the device's default memory pool keep what stream-ordered frees
/// return, instead of handing it back at every synchronisation (its default
/// threshold of 0), so a step's short-lived buffers are reused rather than
/// mapped again. A failure only costs that reuse, so it is ignored.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: out-parameter call for a valid device; the attribute value
    // is a u64 as CU_MEMPOOL_ATTR_RELEASE_THRESHOLD requires.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            );
        }
    }
}

/// `v` as an `i32` kernel argument, or an error naming it.
pub(crate) fn arg_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        CudaError::invalid(
            op,
            format!("{what} = {v} exceeds the kernel limit of {}", i32::MAX),
        )
    })
}

pub(crate) fn arg_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        CudaError::invalid(
            op,
            format!("{what} = {v} exceeds the launch limit of {}", u32::MAX),
        )
    })
}

pub(crate) fn launch_cfg(grid: (u32, u32, u32), block: u32, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes,
    }
}

/// The most blocks a launch grid may have along y or z.
pub(crate) const MAX_GRID_YZ: usize = 65_535;

/// `0..total` in consecutive pieces of at most [`MAX_GRID_YZ`]: one launch
/// each, for kernels that take one grid row per item.
pub(crate) fn grid_y_pieces(total: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..total).step_by(MAX_GRID_YZ).map(move |start| start..(start + MAX_GRID_YZ).min(total))
}

/// Shared memory a block may use without opting in to more (all GPUs since sm_20).
pub(crate) const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_pieces_cover_everything_in_order_within_the_limit() {
        assert_eq!(grid_y_pieces(0).count(), 0);
        assert_eq!(grid_y_pieces(MAX_GRID_YZ).collect::<Vec<_>>(), vec![0..MAX_GRID_YZ]);
        let pieces: Vec<_> = grid_y_pieces(2 * MAX_GRID_YZ + 7).collect();
        assert_eq!(pieces, vec![0..MAX_GRID_YZ, MAX_GRID_YZ..2 * MAX_GRID_YZ, 2 * MAX_GRID_YZ..2 * MAX_GRID_YZ + 7]);
    }
}
