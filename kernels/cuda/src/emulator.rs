//! The kernel sources compiled as C++ and run on CPU threads, so that tests
//! check the kernels' logic where there is no GPU.
//!
//! `emulator/block.h` stands in for the CUDA runtime (a std::thread per
//! CUDA thread, barriers for `__syncthreads` and warps, shuffles through a
//! per-warp buffer, cp.async copies that land at the latest allowed wait);
//! each harness beside it (`choose_tokens.cpp`, `attention.cpp`,
//! `gemv.cpp`, `top_k.cpp`, `layers.cpp`) includes one `.cu` file, reads
//! its inputs from stdin, launches the kernels as this crate launches them
//! and writes the outputs to stdout. What the emulation does not model, the
//! GPU tests check: the memory model, timing and occupancy.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use thiserror::Error;

/// What can go wrong building or running an emulated program.
#[derive(Debug, Error)]
pub enum EmulatorError {
    #[error("the emulated {program} does not compile:\n{stderr}")]
    Compile { program: String, stderr: String },
    #[error("the emulated {program} failed ({status}):\n{stderr}")]
    Run { program: String, status: std::process::ExitStatus, stderr: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Every file a harness may include, as the kernels are compiled for the GPU.
const SOURCES: [(&str, &str); 12] = [
    ("block.h", include_str!("../emulator/block.h")),
    ("choose_tokens.cpp", include_str!("../emulator/choose_tokens.cpp")),
    ("attention.cpp", include_str!("../emulator/attention.cpp")),
    ("gemv.cpp", include_str!("../emulator/gemv.cpp")),
    ("top_k.cpp", include_str!("../emulator/top_k.cpp")),
    ("layers.cpp", include_str!("../emulator/layers.cpp")),
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("choose.cu", include_str!("kernels/choose.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("gemv.cu", include_str!("kernels/gemv.cu")),
    ("sample.cu", include_str!("kernels/sample.cu")),
    ("layers.cu", include_str!("kernels/layers.cu")),
];

/// One harness compiled for this machine's CPU.
pub struct Emulated {
    program: String,
    exe: PathBuf,
    _dir: tempfile::TempDir,
}

impl Emulated {
    /// The harness `program` (`choose_tokens`, `attention`, `gemv`, `top_k`
    /// or `layers`)
    /// compiled with the preprocessor `defines` (`NAME` or `NAME=value`),
    /// or `None` where no C++20 compiler answers to `c++`.
    pub fn build(program: &str, defines: &[&str]) -> Result<Option<Self>, EmulatorError> {
        let dir = tempfile::tempdir()?;
        for (name, text) in SOURCES {
            std::fs::write(dir.path().join(name), for_cpu(text))?;
        }
        let exe = dir.path().join(program);
        let compiled = Command::new("c++")
            .args(["-std=c++20", "-O2", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-w"])
            .args(defines.iter().map(|d| format!("-D{d}")))
            .arg("-o")
            .arg(&exe)
            .arg(dir.path().join(format!("{program}.cpp")))
            .output();
        match compiled {
            Ok(out) if out.status.success() => Ok(Some(Self { program: program.to_string(), exe, _dir: dir })),
            Ok(out) => Err(EmulatorError::Compile {
                program: program.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Emulated::build`] for a test: panics if the harness does not
    /// compile, and says on stderr that the test skips where there is no
    /// compiler.
    pub fn build_or_skip(program: &str, defines: &[&str]) -> Option<Self> {
        let built = Self::build(program, defines).unwrap_or_else(|e| panic!("{e}"));
        if built.is_none() {
            eprintln!("skipping the emulated {program}: no C++ compiler answers to `c++`");
        }
        built
    }

    /// Run the program with `input` on stdin; its stdout.
    pub fn run(&self, input: &[u8]) -> Result<Vec<u8>, EmulatorError> {
        let mut child = Command::new(&self.exe).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written from a thread: a large output would otherwise fill the
        // pipe while the input is still being written.
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output()?;
        let written = writer.join().expect("the writer does not panic");
        if !out.status.success() {
            return Err(EmulatorError::Run {
                program: self.program.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        written?;
        Ok(out.stdout)
    }
}

/// A kernel source as the emulator compiles it: its `extern __shared__`
/// array (a trailing comment allowed) pointed at the emulator's dynamic
/// shared memory.
fn for_cpu(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.split("//").next().unwrap_or_default().trim().strip_prefix("extern __shared__ ").and_then(|d| d.strip_suffix("[];")) {
            Some(decl) => {
                let (ty, name) = decl.split_once(' ').expect("extern __shared__ <type> <name>[];");
                format!("    {ty}* {name} = ({ty}*)emu::dynamic_shared;")
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
