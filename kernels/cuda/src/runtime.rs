//! Opening CUDA at run time, compiling the kernel sources with NVRTC, and
//! caching what was compiled.
//!
//! cudarc is built with dynamic loading, so nothing here links against CUDA;
//! cudarc panics when a library is missing, so every entry point first checks
//! that the library can be opened and turns its absence into a
//! [`CudaError`]. Compiled images are cached per process and architecture,
//! and loaded modules per device: each kernel source is compiled at most once
//! per process and loaded at most once per device.
//!
//! Not here: kernel launches (see the op modules) and stream management
//! (each [`crate::CudaKernels`] uses its device's default stream).

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, sys as dsys};
use cudarc::nvrtc::{Ptx, sys as nsys};

use crate::disk_cache;
use crate::error::{CudaError, Result, driver};

/// One `.cu` file, embedded in the binary.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source {
    pub name: &'static str,
    pub code: &'static str,
}

/// Options every module is compiled with (besides its target and define).
const COMPILE_OPTIONS: &str = "--std=c++17 --fmad=true";

/// Headers the sources may `#include`, served from memory.
const HEADERS: &[(&str, &str)] = &[("common.cuh", include_str!("kernels/common.cuh"))];

pub(crate) const LAYERS: Source = Source {
    name: "layers.cu",
    code: include_str!("kernels/layers.cu"),
};
pub(crate) const GEMV: Source = Source {
    name: "gemv.cu",
    code: include_str!("kernels/gemv.cu"),
};
pub(crate) const ATTENTION: Source = Source {
    name: "attention.cu",
    code: include_str!("kernels/attention.cu"),
};
pub(crate) const SAMPLE: Source = Source {
    name: "sample.cu",
    code: include_str!("kernels/sample.cu"),
};
pub(crate) const CHOOSE: Source = Source {
    name: "choose.cu",
    code: include_str!("kernels/choose.cu"),
};

/// A source plus the preprocessor define that selects its variant (the GEMV
/// source is compiled once per weight type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ModuleKey {
    pub name: &'static str,
    pub define: Option<&'static str>,
}

impl ModuleKey {
    fn label(&self) -> String {
        match self.define {
            Some(d) => format!("{} (-D{d})", self.name),
            None => self.name.to_string(),
        }
    }
}

/// Run `f`, turning a panic from cudarc (a missing symbol, say) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("{what}: {msg}")
    })
}

/// Open and initialise the driver once per process.
pub(crate) fn probe_driver() -> Result<()> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: only tries to open the library with the dynamic loader.
            if !unsafe { dsys::is_culib_present() } {
                return Err(
                    "libcuda (libcuda.so.1) could not be opened by the dynamic loader; \
                            install the NVIDIA driver or add its directory to LD_LIBRARY_PATH"
                        .into(),
                );
            }
            match guarded("initialising the CUDA driver", cudarc::driver::result::init)? {
                Ok(()) => Ok(()),
                Err(e) => Err(format!("cuInit failed: {e}")),
            }
        })
        .clone()
        .map_err(CudaError::NoDriver)
}

/// Open NVRTC once per process and return its supported SM versions (e.g. 90).
pub(crate) fn probe_nvrtc() -> Result<&'static [i32]> {
    static PROBE: OnceLock<std::result::Result<Vec<i32>, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            // SAFETY: only tries to open the library with the dynamic loader.
            if !unsafe { nsys::is_culib_present() } {
                return Err("libnvrtc (libnvrtc.so.13) could not be opened by the dynamic loader; \
                            install the CUDA 13 NVRTC library or add its directory to LD_LIBRARY_PATH"
                    .into());
            }
            guarded("querying NVRTC", || {
                let mut n: c_int = 0;
                // SAFETY: plain out-parameter calls into a loaded library.
                unsafe { nsys::nvrtcGetNumSupportedArchs(&mut n) }
                    .result()
                    .map_err(|e| format!("nvrtcGetNumSupportedArchs: {e}"))?;
                let mut archs = vec![0 as c_int; n.max(0) as usize];
                unsafe { nsys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
                    .result()
                    .map_err(|e| format!("nvrtcGetSupportedArchs: {e}"))?;
                Ok(archs)
            })?
        })
        .as_ref()
        .map(|v| v.as_slice())
        .map_err(|e| CudaError::NoNvrtc(e.clone()))
}

/// What NVRTC is asked to produce for a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    /// A cubin for exactly this SM (e.g. 90): nothing left for the driver to JIT.
    Cubin(i32),
    /// PTX for an older virtual architecture, when NVRTC does not know the
    /// device's SM yet; the driver JIT-compiles it on load.
    Ptx(i32),
}

impl Target {
    pub(crate) fn for_sm(sm: i32, supported: &[i32]) -> Result<Target> {
        if supported.contains(&sm) {
            return Ok(Target::Cubin(sm));
        }
        match supported.iter().copied().filter(|&a| a <= sm).max() {
            Some(a) => Ok(Target::Ptx(a)),
            None => Err(CudaError::invalid(
                "choosing a GPU architecture",
                format!("device is sm_{sm} but this NVRTC supports only {supported:?}"),
            )),
        }
    }

    fn option(&self) -> String {
        match self {
            Target::Cubin(sm) => format!("--gpu-architecture=sm_{sm}"),
            Target::Ptx(sm) => format!("--gpu-architecture=compute_{sm}"),
        }
    }

    fn label(&self) -> String {
        match self {
            Target::Cubin(sm) => format!("sm_{sm}"),
            Target::Ptx(sm) => format!("compute_{sm}"),
        }
    }
}

/// A compiled image: cubin bytes or PTX text.
#[derive(Clone, Debug)]
pub(crate) enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

impl Image {
    pub(crate) fn len(&self) -> usize {
        match self {
            Image::Cubin(b) => b.len(),
            Image::Ptx(s) => s.len(),
        }
    }
}

/// Owns an `nvrtcProgram` and destroys it on every path.
struct Program(nsys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is
        // destroyed once. A failure to free compiler memory is not actionable.
        let _ = unsafe { nsys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn nvrtc_log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: valid program; out-parameter and buffer sized by NVRTC.
    if unsafe { nsys::nvrtcGetProgramLogSize(prog.0, &mut size) }
        .result()
        .is_err()
        || size == 0
    {
        return String::new();
    }
    let mut buf = vec![0 as c_char; size];
    if unsafe { nsys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr()) }
        .result()
        .is_err()
    {
        return String::new();
    }
    // SAFETY: NVRTC writes a NUL-terminated string of `size` bytes.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// Compile one source with NVRTC. Needs only libnvrtc, not a GPU.
pub(crate) fn compile(source: Source, key: ModuleKey, target: &Target) -> Result<Image> {
    probe_nvrtc()?;
    let fail = |detail: String| CudaError::Compile {
        module: key.label(),
        arch: target.label(),
        detail,
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| fail(format!("interior NUL in {s:?}")));
    let src = cstr(source.code)?;
    let name = cstr(source.name)?;
    let header_src: Vec<CString> = HEADERS
        .iter()
        .map(|(_, c)| cstr(c))
        .collect::<Result<_>>()?;
    let header_names: Vec<CString> = HEADERS
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<Result<_>>()?;
    let header_src_ptrs: Vec<*const c_char> = header_src.iter().map(|c| c.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|c| c.as_ptr()).collect();

    let mut raw: nsys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a live NUL-terminated string for the
    // duration of the call; NVRTC copies what it keeps.
    unsafe {
        nsys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            name.as_ptr(),
            HEADERS.len() as c_int,
            header_src_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    }
    .result()
    .map_err(|e| fail(format!("nvrtcCreateProgram: {e}")))?;
    let prog = Program(raw);

    let mut options = vec![target.option()];
    options.extend(COMPILE_OPTIONS.split(' ').map(str::to_string));
    if let Some(d) = key.define {
        options.push(format!("-D{d}"));
    }
    // WEFT_NVRTC_VERBOSE=1 prints ptxas register and spill counts per kernel.
    let verbose = std::env::var_os("WEFT_NVRTC_VERBOSE").is_some_and(|v| v == "1");
    if verbose && matches!(target, Target::Cubin(_)) {
        options.push("--ptxas-options=-v".to_string());
    }
    let opts: Vec<CString> = options.iter().map(|o| cstr(o)).collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: valid program and option strings.
    let compiled =
        unsafe { nsys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
    if let Err(e) = compiled.result() {
        return Err(fail(format!(
            "{e} (options {options:?}):\n{}",
            nvrtc_log(&prog)
        )));
    }

    if verbose {
        eprintln!(
            "NVRTC {} for {}:\n{}",
            key.label(),
            target.label(),
            nvrtc_log(&prog)
        );
    }
    let mut size = 0usize;
    match target {
        Target::Cubin(_) => {
            // SAFETY: compiled program; buffer sized by NVRTC.
            unsafe { nsys::nvrtcGetCUBINSize(prog.0, &mut size) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e}")))?;
            let mut buf = vec![0u8; size];
            unsafe { nsys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetCUBIN: {e}")))?;
            Ok(Image::Cubin(buf))
        }
        Target::Ptx(_) => {
            // SAFETY: as above.
            unsafe { nsys::nvrtcGetPTXSize(prog.0, &mut size) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetPTXSize: {e}")))?;
            let mut buf = vec![0u8; size];
            unsafe { nsys::nvrtcGetPTX(prog.0, buf.as_mut_ptr() as *mut c_char) }
                .result()
                .map_err(|e| fail(format!("nvrtcGetPTX: {e}")))?;
            while buf.last() == Some(&0) {
                buf.pop();
            }
            String::from_utf8(buf)
                .map(Image::Ptx)
                .map_err(|_| fail("PTX is not UTF-8".into()))
        }
    }
}

/// Compile (or fetch from the process-wide cache) one module for a target.
fn compiled(source: Source, key: ModuleKey, target: &Target) -> Result<Arc<Image>> {
    type Cache = Mutex<HashMap<(ModuleKey, Target), Arc<Image>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(img) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(key, target.clone()))
    {
        return Ok(img.clone());
    }
    // Compiled outside the lock: another thread may race us to the same
    // module, which costs one redundant compile and nothing else.
    let img = Arc::new(compiled_on_disk(source, key, target)?);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((key, target.clone()))
        .or_insert_with(|| img.clone());
    Ok(img)
}

/// Fetch one module from the disk cache, or compile and store it there.
fn compiled_on_disk(source: Source, key: ModuleKey, target: &Target) -> Result<Image> {
    let mut parts: Vec<&[u8]> = vec![source.code.as_bytes()];
    for (name, code) in HEADERS {
        parts.extend([name.as_bytes(), code.as_bytes()]);
    }
    // Without NVRTC's version the key would not say which compiler made an
    // image: compile without the disk cache.
    let Some(version) = nvrtc_version() else { return compile(source, key, target) };
    let label = target.label();
    let define = key.define.unwrap_or("");
    parts.extend([label.as_bytes(), define.as_bytes(), version.as_bytes(), COMPILE_OPTIONS.as_bytes()]);
    let name = disk_cache::key(&parts);
    let tagged = |img: &Image| -> Vec<u8> {
        match img {
            Image::Cubin(b) => [&[0u8][..], b].concat(),
            Image::Ptx(s) => [&[1u8][..], s.as_bytes()].concat(),
        }
    };
    let cached = disk_cache::load(&name).and_then(|bytes| match bytes.split_first() {
        Some((0, b)) => Some(Image::Cubin(b.to_vec())),
        Some((1, b)) => String::from_utf8(b.to_vec()).ok().map(Image::Ptx),
        _ => None,
    });
    if let Some(img) = cached {
        return Ok(img);
    }
    let img = compile(source, key, target)?;
    disk_cache::store(&name, &tagged(&img));
    Ok(img)
}

/// NVRTC's version as "major.minor" (part of every disk-cache key).
fn nvrtc_version() -> Option<String> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: plain out-parameter call; NVRTC was probed before any compile.
    unsafe { nsys::nvrtcVersion(&mut major, &mut minor) }.result().ok().map(|()| format!("{major}.{minor}"))
}

/// A module loaded into one device's context, with its functions looked up once.
pub(crate) struct LoadedModule {
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl LoadedModule {
    pub(crate) fn function(&self, name: &'static str) -> Result<CudaFunction> {
        let mut fns = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .module
            .load_function(name)
            .map_err(driver("looking up a kernel in its module"))?;
        fns.insert(name, f.clone());
        Ok(f)
    }
}

/// One GPU: its primary context and the modules loaded into it.
pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub sm: i32,
    pub target: Target,
    pub name: String,
    pub sm_count: u32,
    modules: Mutex<HashMap<ModuleKey, Arc<LoadedModule>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("sm", &self.sm)
            .finish()
    }
}

impl Device {
    /// The process-wide handle for device `ordinal`, created on first use.
    pub(crate) fn get(ordinal: usize) -> Result<Arc<Device>> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
        probe_driver()?;
        let supported = probe_nvrtc()?;
        let devices = DEVICES.get_or_init(Default::default);
        let mut map = devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let count = guarded(
            "counting devices",
            cudarc::driver::result::device::get_count,
        )
        .map_err(CudaError::NoDriver)?
        .map_err(driver("counting devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                detail: format!("the driver reports {count} device(s)"),
            });
        }
        let ctx = guarded("creating a context", || CudaContext::new(ordinal))
            .map_err(CudaError::NoDriver)?
            .map_err(driver("creating the device context"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?;
        let sm = major * 10 + minor;
        let target = Target::for_sm(sm, supported)?;
        let name = ctx.name().map_err(driver("reading the device name"))?;
        let sm_count = ctx
            .attribute(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("reading the multiprocessor count"))?
            .max(1) as u32;
        let dev = Arc::new(Device {
            ctx,
            sm,
            target,
            name,
            sm_count,
            modules: Mutex::new(HashMap::new()),
        });
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    /// The module for `key`, compiled and loaded on first use.
    pub(crate) fn module(&self, source: Source, key: ModuleKey) -> Result<Arc<LoadedModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mods.get(&key) {
            return Ok(m.clone());
        }
        let image = compiled(source, key, &self.target)?;
        let ptx = match &*image {
            Image::Cubin(b) => Ptx::from_binary(b.clone()),
            Image::Ptx(s) => Ptx::from_src(s.clone()),
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(driver("loading a compiled module"))?;
        let loaded = Arc::new(LoadedModule {
            module,
            functions: Mutex::new(HashMap::new()),
        });
        mods.insert(key, loaded.clone());
        Ok(loaded)
    }
}

/// Compile every kernel module for `sm` (e.g. 90) without loading it: needs
/// NVRTC but no GPU. Returns (module, image bytes) per module. Used by tests
/// and to check the sources on machines without a device.
pub fn compile_all_for_sm(sm: i32) -> Result<Vec<(String, usize)>> {
    let supported = probe_nvrtc()?;
    let target = Target::for_sm(sm, supported)?;
    let mut out = Vec::new();
    for (source, key) in all_modules() {
        // Past the process's cache, so that the disk cache is exercised.
        let img = compiled_on_disk(source, key, &target)?;
        out.push((key.label(), img.len()));
    }
    Ok(out)
}

fn all_modules() -> Vec<(Source, ModuleKey)> {
    let mut v = vec![
        (
            LAYERS,
            ModuleKey {
                name: LAYERS.name,
                define: None,
            },
        ),
        (
            SAMPLE,
            ModuleKey {
                name: SAMPLE.name,
                define: None,
            },
        ),
        (
            CHOOSE,
            ModuleKey {
                name: CHOOSE.name,
                define: None,
            },
        ),
    ];
    for ty in crate::KvType::ALL {
        v.push((
            ATTENTION,
            ModuleKey {
                name: ATTENTION.name,
                define: Some(ty.define()),
            },
        ));
    }
    for ty in crate::WeightType::ALL {
        v.push((
            GEMV,
            ModuleKey {
                name: GEMV.name,
                define: Some(ty.define()),
            },
        ));
    }
    v
}
