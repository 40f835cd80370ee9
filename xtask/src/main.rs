//! `cargo xtask <command>`: project automation that needs no tools beyond cargo (and, for
//! `golden`, the Python packages of `scripts/golden/`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// The test command of the README, which CI runs too.
const TEST_ARGS: &[&str] = &["test", "--workspace", "--features", "bidora-backend/wgpu"];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bidora project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run what CI runs: type-check the CUDA backend, then the README's test command
    /// (tests on ndarray and on WGPU).
    Ci,
    /// Regenerate the golden fixtures with HF PEFT / transformers (Python, CPU torch).
    ///
    /// Needs the packages of scripts/golden/requirements.txt on PYTHONPATH; install them with
    /// `scripts/golden/setup.sh [DIR]` (default /opt/bidora-py), which never pulls a CUDA torch.
    Golden {
        /// Folder holding the Python packages.
        #[arg(long, default_value = "/opt/bidora-py", env = "BIDORA_PYTHONPATH")]
        pythonpath: PathBuf,
        /// Python interpreter that has torch (Debian's python3-torch is for /usr/bin/python3).
        #[arg(long, default_value = "/usr/bin/python3")]
        python: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let st = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{:?} failed with {st}", cmd.get_program());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Ci => {
            status(Command::new("cargo").args([
                "check",
                "--workspace",
                "--features",
                "bidora-backend/cuda",
            ]))?;
            status(Command::new("cargo").args(TEST_ARGS))
        }
        Cmd::Golden { pythonpath, python } => {
            if !pythonpath.join("peft").is_dir() {
                bail!(
                    "no peft under {}: run `scripts/golden/setup.sh {}` first",
                    pythonpath.display(),
                    pythonpath.display()
                );
            }
            for script in ["scripts/golden/adapters.py", "scripts/golden/metrics.py"] {
                status(
                    Command::new(&python)
                        .arg(script)
                        .env("PYTHONPATH", &pythonpath)
                        .env("PYTHONHASHSEED", "0"),
                )?;
            }
            Ok(())
        }
    }
}
