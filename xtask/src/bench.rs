//! `cargo xtask bench`: runs the criterion benchmarks of `benches/` (each whole-model case in
//! its own process, so its peak memory is its own), optionally the HF PEFT peer
//! (`scripts/bench/peft_step.py`) on the same model, shapes and threads, and writes
//! `docs/BENCHMARKS.md` with the machine, the versions and the ratios. Two models:
//! all-MiniLM-L6-v2 (encoder steps and inference) and SmolLM2-135M (decoder steps, generation).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{asset, default_assets_dir, fetch, root};

/// What `cargo xtask bench` was asked for.
#[derive(clap::Args)]
pub struct Options {
    /// Backend: cpu (ndarray), wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Shorter warm-up and measurement times for the layer benchmarks.
    #[arg(long)]
    pub quick: bool,
    /// Also run the HF PEFT peer on the same model, shapes and threads.
    #[arg(long)]
    pub peer: bool,
    /// Threads for both sides (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python of the peer, with torch, transformers and peft (default: the venv of
    /// scripts/bench/setup-peer.sh, /opt/bidora-peer/bin/python).
    #[arg(long, default_value = PEER_PYTHON, env = "BIDORA_PEER_PYTHON")]
    pub python: PathBuf,
    /// Folder added to the peer's PYTHONPATH (none by default: the venv has its packages).
    #[arg(long)]
    pub pythonpath: Option<PathBuf>,
    /// Report to write.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    pub out: PathBuf,
}

impl Options {
    /// The thread count for both sides.
    fn threads(&self) -> usize {
        crate::threads_or_all(self.threads)
    }
}

/// The whole-model cases, each run in its own process: (criterion id, label).
const MODEL_CASES: &[(&str, &str)] = &[
    ("minilm_step/lora", "LoRA step"),
    ("minilm_step/dora", "DoRA step"),
    ("minilm_step/bidora_darts", "BiDoRA iteration (DARTS)"),
    (
        "minilm_step/bidora_darts_fd_half",
        "BiDoRA iteration, finite differences on half the batch",
    ),
    ("minilm_step/full", "full fine-tuning step"),
    ("minilm_step/lora_small", "LoRA step, batch 4 × 32"),
    ("minilm_inference/base", "inference, base model"),
    ("minilm_inference/dora_adapted", "inference, DoRA unmerged"),
    ("minilm_inference/merged", "inference, DoRA merged"),
    (GEMM_CASE, "GEMM 2048 × 384 × 1536 (the floor's rate)"),
];

/// The decoder cases (`benches/benches/smollm2.rs`), each run in its own process.
const DECODER_CASES: &[(&str, &str)] = &[
    ("smollm2_step/lora", "LoRA step, 8 × 256"),
    ("smollm2_step/dora", "DoRA step, 8 × 256"),
    ("smollm2_generate/batch1", "greedy generation, batch 1"),
    ("smollm2_generate/batch8", "greedy generation, batch 8"),
    (MEMORY_CASE, "reading 512 MiB (the decoding floor's rate)"),
];

/// The case that measures the kernels' GEMM rate.
const GEMM_CASE: &str = "gemm/2048x384x1536";

/// The case that measures the memory read rate.
const MEMORY_CASE: &str = "memory/read_512mib";

/// Which peer script measures a case, and its mode there.
fn peer_mode(id: &str) -> Option<(PeerScript, &'static str)> {
    let minilm = |m| Some((PeerScript::Encoder, m));
    let decoder = |m| Some((PeerScript::Decoder, m));
    match id {
        "minilm_step/lora" => minilm("lora"),
        "minilm_step/dora" => minilm("dora"),
        "minilm_step/full" => minilm("full"),
        "minilm_inference/base" => minilm("inference"),
        "smollm2_step/lora" => decoder("lora"),
        "smollm2_step/dora" => decoder("dora"),
        "smollm2_generate/batch1" => decoder("generate1"),
        "smollm2_generate/batch8" => decoder("generate8"),
        _ => None,
    }
}

/// The peer's two scripts.
#[derive(Clone, Copy)]
enum PeerScript {
    /// `scripts/bench/peft_step.py` on all-MiniLM-L6-v2.
    Encoder,
    /// `scripts/bench/peft_decoder.py` on SmolLM2-135M.
    Decoder,
}

/// One criterion result: median and its 95% interval, in seconds.
#[derive(Clone, Copy)]
struct Timing {
    median: f64,
    low: f64,
    high: f64,
}

/// The peer's figures for one case.
struct Peer {
    median: f64,
    peak_kib: u64,
    busy: f64,
}

/// The peer's run: its package versions and its figures per case id.
struct PeerRun {
    /// `torch transformers peft`.
    versions: String,
    cases: BTreeMap<&'static str, Peer>,
}

pub fn run(o: &Options) -> Result<()> {
    let model_dir = fetch(asset("minilm")?, &default_assets_dir())?;
    let decoder = fetch(asset("smollm2")?, &default_assets_dir())?;
    let exes = build(&o.backend)?;
    let home = root().join("target/bidora-bench/criterion");
    // Fresh results only: a stale estimate must never reach the report.
    if home.exists() {
        std::fs::remove_dir_all(&home).with_context(|| format!("clearing {}", home.display()))?;
    }
    let timing_args: Vec<String> = if o.quick {
        ["--warm-up-time", "0.5", "--measurement-time", "1"]
    } else {
        ["--warm-up-time", "2", "--measurement-time", "8"]
    }
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = |cmd: &mut Command| {
        cmd.env("CRITERION_HOME", &home)
            .env("RAYON_NUM_THREADS", o.threads().to_string())
            // matrixmultiply (Burn's own matmul, still used for small products) has its own pool.
            .env("MATMUL_NUM_THREADS", o.threads().to_string())
            .current_dir(root());
    };

    // Layer-level benchmarks: one process each.
    for name in ["adapter_layer", "regularizer", "bilevel_step"] {
        let exe = exes
            .get(name)
            .with_context(|| format!("no bench `{name}`"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--bench").args(&timing_args);
        env(&mut cmd);
        eprintln!("$ {name} {}", timing_args.join(" "));
        let st = cmd.status().with_context(|| format!("starting {name}"))?;
        if !st.success() {
            bail!("benchmark {name} failed with {st}");
        }
    }

    // Whole-model cases: one process each, peak RSS read from the bench's own report.
    let mut measured = Measured::default();
    for (bench, cases) in [("minilm", MODEL_CASES), ("smollm2", DECODER_CASES)] {
        let exe = exes
            .get(bench)
            .with_context(|| format!("no bench `{bench}`"))?;
        for &(id, _) in cases {
            let mut cmd = Command::new(exe);
            cmd.args(["--bench", &format!("^{id}$")])
                .args(&timing_args)
                .env("BIDORA_BENCH_CASE", id)
                .stdout(Stdio::piped());
            env(&mut cmd);
            measured.run_case(bench, id, &mut cmd)?;
        }
    }

    let peers = if o.peer {
        run_peer(o, &model_dir, &decoder)?
    } else {
        None
    };
    let results = read_estimates(&home)?;
    let report = render(o, &results, &measured, peers.as_ref())?;
    let out = crate::in_root(&o.out);
    crate::write_atomic(&out, report.as_bytes())?;
    eprintln!("wrote {}", out.display());
    print_summary(&results, peers.as_ref());
    Ok(())
}

/// Builds the bench executables and returns them by bench name.
fn build(backend: &str) -> Result<BTreeMap<String, PathBuf>> {
    let mut cmd = Command::new("cargo");
    cmd.args(["bench", "-p", "bidora-benches", "--no-run"]);
    match backend {
        "cpu" => {}
        "wgpu" | "cuda" => {
            cmd.args(["--features", backend]);
        }
        other => bail!("unknown backend `{other}` (cpu, wgpu or cuda)"),
    }
    crate::cargo_executables(&mut cmd, "the benchmarks")
}

/// Every `group/function[/parameter]` criterion measured, from its `new/estimates.json`.
fn read_estimates(home: &Path) -> Result<BTreeMap<String, Timing>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() || p.file_name().is_some_and(|n| n == "report") {
                continue;
            }
            // A benchmark's folder holds `new/` (this run) beside `base/` and `change/`; a
            // benchmark may itself be called `base`, so recognise folders by their content.
            let new = p.join("new");
            if !new.join("benchmark.json").is_file() {
                stack.push(p);
                continue;
            }
            let bench: Value = read_json(&new.join("benchmark.json"))?;
            let est: Value = read_json(&new.join("estimates.json"))?;
            let id = bench["full_id"]
                .as_str()
                .context("benchmark.json without full_id")?
                .to_string();
            let m = &est["median"];
            let ns = |v: &Value| v.as_f64().unwrap_or(f64::NAN) * 1e-9;
            out.insert(
                id,
                Timing {
                    median: ns(&m["point_estimate"]),
                    low: ns(&m["confidence_interval"]["lower_bound"]),
                    high: ns(&m["confidence_interval"]["upper_bound"]),
                },
            );
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Where scripts/bench/setup-peer.sh puts the peer's venv.
const PEER_PYTHON: &str = "/opt/bidora-peer/bin/python";

/// A command running the peer's Python, with `--pythonpath` when given.
fn python(o: &Options) -> Command {
    let mut c = Command::new(&o.python);
    if let Some(p) = &o.pythonpath {
        c.env("PYTHONPATH", p);
    }
    c
}

/// Whether the peer's Python has torch, transformers and peft.
fn peer_ready(o: &Options) -> bool {
    python(o)
        .args(["-c", "import torch, transformers, peft, gguf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_peer(o: &Options, encoder: &Path, decoder: &Path) -> Result<Option<PeerRun>> {
    if !peer_ready(o) {
        eprintln!(
            "skipping the PEFT peer: {} has no torch, transformers, peft and gguf.\n\
             Set the peer up with `scripts/bench/setup-peer.sh` (a venv with the pinned current\n\
             releases, at {PEER_PYTHON}), or point --python (and --pythonpath) at one.",
            o.python.display()
        );
        return Ok(None);
    }
    let threads = o.threads().to_string();
    let mut out = BTreeMap::new();
    for &(id, _) in MODEL_CASES.iter().chain(DECODER_CASES) {
        let Some((script, mode)) = peer_mode(id) else {
            continue;
        };
        let mut cmd = python(o);
        match script {
            PeerScript::Encoder => cmd
                .arg(root().join("scripts/bench/peft_step.py"))
                .arg("--model")
                .arg(encoder)
                .args(["--steps", if o.quick { "3" } else { "10" }]),
            // A generation call or a step takes seconds: fewer of them.
            PeerScript::Decoder => cmd
                .arg(root().join("scripts/bench/peft_decoder.py"))
                .arg("--gguf")
                .arg(decoder)
                .args(["--steps", if o.quick { "2" } else { "5" }]),
        };
        eprintln!("$ peer {id} (--mode {mode})");
        let res = cmd
            .args(["--mode", mode, "--threads", &threads])
            .env("OMP_NUM_THREADS", &threads)
            .env("MKL_NUM_THREADS", &threads)
            .stderr(Stdio::null())
            .output()
            .context("starting the peer")?;
        if !res.status.success() {
            bail!("the PEFT peer failed on {id} with {}", res.status);
        }
        let text = String::from_utf8_lossy(&res.stdout);
        let v: Value = serde_json::from_str(text.lines().last().unwrap_or_default())
            .with_context(|| format!("the peer printed no JSON for {id}: {text}"))?;
        out.insert(
            id,
            Peer {
                median: v["median_s"].as_f64().unwrap_or(f64::NAN),
                peak_kib: v["peak_rss_kib"].as_u64().unwrap_or(0),
                busy: v["busy_cores"].as_f64().unwrap_or(f64::NAN),
            },
        );
    }
    // Versions, once, for the report.
    let versions = python(o)
        .args([
            "-c",
            "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Ok(Some(PeerRun {
        versions,
        cases: out,
    }))
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// CPU model, logical cores, memory and OS, from /proc and /etc/os-release.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.into());
    format!("{cpu}, {cores} logical cores, {mem_gib:.0} GiB RAM, {os}")
}

fn secs(t: f64) -> String {
    if t >= 1.0 {
        format!("{t:.3} s")
    } else if t >= 1e-3 {
        format!("{:.2} ms", t * 1e3)
    } else {
        format!("{:.1} µs", t * 1e6)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// What each whole-model case's process reported besides its timing.
#[derive(Default)]
struct Measured {
    /// Peak RSS, KiB.
    peaks: BTreeMap<&'static str, u64>,
    /// Average busy cores over the process.
    busy: BTreeMap<&'static str, f64>,
}

impl Measured {
    /// Runs one case's process (`cmd`, stdout piped) and keeps the peak RSS and busy cores it
    /// prints.
    fn run_case(&mut self, bench: &str, id: &'static str, cmd: &mut Command) -> Result<()> {
        eprintln!("$ {bench} {id}");
        let out = cmd
            .output()
            .with_context(|| format!("starting {bench} {id}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        eprint!("{text}");
        if !out.status.success() {
            bail!("benchmark {id} failed with {}", out.status);
        }
        let line = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        if let Some(kib) = line("bidora-bench peak-rss-kib ").and_then(|v| v.parse().ok()) {
            self.peaks.insert(id, kib);
        }
        if let Some(b) = line("bidora-bench busy-cores ").and_then(|v| v.parse().ok()) {
            self.busy.insert(id, b);
        }
        Ok(())
    }
}

/// GFLOP/s of the GEMM case, measured in this run at this run's threads.
fn gemm_rate(r: &BTreeMap<String, Timing>) -> Option<f64> {
    r.get(GEMM_CASE)
        .map(|t| 2.0 * 2048.0 * 384.0 * 1536.0 / t.median / 1e9)
}

/// Matrix-product work of a case in GFLOP (MiniLM-L6 at 16 × 128: a forward is ≈46 GFLOP;
/// LoRA/DoRA add the input gradients, full fine-tuning also the weight gradients, a BiDoRA
/// iteration is four such passes), or `None` for cases without a floor.
fn case_gflop(id: &str) -> Option<f64> {
    match id {
        "minilm_step/lora" | "minilm_step/dora" => Some(92.0),
        "minilm_step/full" => Some(138.0),
        // 128 tokens instead of 2048.
        "minilm_step/lora_small" => Some(92.0 / 16.0),
        "minilm_step/bidora_darts" => Some(4.0 * 92.0),
        "minilm_step/bidora_darts_fd_half" => Some(3.0 * 92.0),
        "minilm_inference/base" | "minilm_inference/dora_adapted" | "minilm_inference/merged" => {
            Some(46.0)
        }
        _ => None,
    }
}

fn render(
    o: &Options,
    r: &BTreeMap<String, Timing>,
    measured: &Measured,
    peer_run: Option<&PeerRun>,
) -> Result<String> {
    let peaks = &measured.peaks;
    let peers = peer_run.map(|p| &p.cases);
    let rate = gemm_rate(r);
    let floor = |id: &str| Some(case_gflop(id)? / rate?);
    let mut s = String::new();
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rustc = command_output("rustc", &["--version"]);
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty =
        !command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let backend = match o.backend.as_str() {
        "cpu" => {
            "ndarray (burn-ndarray with simd + multi-threads, matrixmultiply GEMM, no BLAS), f32"
        }
        "wgpu" => "WGPU, f32",
        _ => "CUDA, f32",
    };
    writeln!(s, "# Benchmarks\n")?;
    writeln!(
        s,
        "Written by `cargo xtask bench{}{}{}` — do not edit by hand; analysis and the history of\n\
         optimisations are in [PERFORMANCE.md](PERFORMANCE.md). Criterion medians with their 95%\n\
         interval; each whole-model case ran in its own process (peak RSS is that process's\n\
         `VmHWM`). Compare ratios measured in one run: a shared machine drifts between runs.\n",
        if o.backend != "cpu" {
            format!(" --backend {}", o.backend)
        } else {
            String::new()
        },
        if o.quick { " --quick" } else { "" },
        if o.peer { " --peer" } else { "" },
    )?;
    writeln!(s, "| | |\n|---|---|")?;
    writeln!(s, "| machine | {} |", machine())?;
    writeln!(s, "| date | {date} |")?;
    writeln!(
        s,
        "| threads | {} (RAYON_NUM_THREADS; torch.set_num_threads for the peer) |",
        o.threads()
    )?;
    writeln!(s, "| backend | {backend} |")?;
    writeln!(s, "| toolchain | {rustc}, burn 0.21.0, release profile |")?;
    writeln!(
        s,
        "| commit | {commit}{} |",
        if dirty { " (with local changes)" } else { "" }
    )?;
    if let Some(p) = peer_run {
        let mut parts = p.versions.split_whitespace();
        writeln!(
            s,
            "| peer | torch {}, transformers {}, peft {} (`scripts/bench/peft_step.py`) |",
            parts.next().unwrap_or("?"),
            parts.next().unwrap_or("?"),
            parts.next().unwrap_or("?")
        )?;
    }
    writeln!(s)?;

    // Whole model.
    writeln!(
        s,
        "## all-MiniLM-L6-v2, batch 16 × 128 tokens (`benches/benches/minilm.rs`)\n"
    )?;
    writeln!(
        s,
        "Training: one optimiser step (forward, backward, AdamW) with dropout on, r = 8, alpha 16,\n\
         adapter dropout 0.1 on query and value, a 2-way classifier trained; DoRA with PEFT's\n\
         detached norm, BiDoRA with the exact norm, γ = 1e-5 and the DARTS hypergradient (a lower\n\
         step, the validation forward/backward and two finite-difference passes). Inference: one\n\
         forward without gradients. The peer runs the same shapes, token ids and settings.\n"
    )?;
    let dora = r.get("minilm_step/dora").map(|t| t.median);
    writeln!(
        s,
        "The floor is the case's matrix-product work (MiniLM-L6 at 16 × 128: ≈46 GFLOP forward, \
         92 for a LoRA/DoRA step, 138 with weight gradients) at the GEMM rate measured in this run \
         ({}); busy cores are each process's CPU time over its wall time (bidora: the whole case \
         process; the peer: its timed steps).\n",
        rate.map_or("not measured".to_string(), |g| format!(
            "{g:.0} GFLOP/s, the last row"
        ))
    )?;
    let mut header = "| case | median [95% CI] | per second | ratio to the DoRA step | × floor | peak RSS | busy cores |"
        .to_string();
    let mut rule = "|---|---|---|---|---|---|---|".to_string();
    if peers.is_some() {
        header.push_str(
            " PEFT median | bidora / PEFT | PEFT × floor | PEFT peak RSS | PEFT busy cores |",
        );
        rule.push_str("---|---|---|---|---|");
    }
    writeln!(s, "{header}\n{rule}")?;
    for &(id, label) in MODEL_CASES {
        let Some(t) = r.get(id) else {
            writeln!(s, "| {label} | not measured | | | |")?;
            continue;
        };
        let ratio = match (
            dora,
            id.starts_with("minilm_step") && !id.ends_with("_small"),
        ) {
            (Some(d), true) => format!("{:.2}", t.median / d),
            _ => String::new(),
        };
        let over_floor =
            |median: f64| floor(id).map_or(String::new(), |f| format!("{:.2}", median / f));
        write!(
            s,
            "| {label} | {} [{}, {}] | {:.3} | {ratio} | {} | {} | {} |",
            secs(t.median),
            secs(t.low),
            secs(t.high),
            1.0 / t.median,
            over_floor(t.median),
            peaks.get(id).map_or(String::new(), |&k| mib(k)),
            measured
                .busy
                .get(id)
                .map_or(String::new(), |b| format!("{b:.2}")),
        )?;
        if let Some(p) = peers {
            match p.get(id) {
                Some(p) => write!(
                    s,
                    " {} | {:.2} | {} | {} | {:.2} |",
                    secs(p.median),
                    t.median / p.median,
                    over_floor(p.median),
                    mib(p.peak_kib),
                    p.busy
                )?,
                None => write!(s, " | | | | |")?,
            }
        }
        writeln!(s)?;
    }
    writeln!(s)?;

    // Targets.
    writeln!(s, "### Targets (issue 15)\n")?;
    let get = |id: &str| r.get(id).map(|t| t.median);
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    if let (Some(b), Some(d)) = (get("minilm_step/bidora_darts"), dora) {
        writeln!(
            s,
            "- BiDoRA iteration ≤ 3 × DoRA step: {:.2} × — {}",
            b / d,
            check(b / d <= 3.0)
        )?;
    }
    if let (Some(b), Some(d)) = (get("minilm_step/bidora_darts_fd_half"), dora) {
        writeln!(
            s,
            "  - with `--fd-fraction 0.5` (not the default; docs/PERFORMANCE.md): {:.2} ×",
            b / d
        )?;
    }
    if let (Some(m), Some(b)) = (get("minilm_inference/merged"), get("minilm_inference/base")) {
        let gap = (m / b - 1.0) * 100.0;
        writeln!(
            s,
            "- merged inference within 5% of the base model: {gap:+.1}% — {}",
            check(gap <= 5.0)
        )?;
    }
    match peers {
        Some(p) => {
            // (case, label, the largest allowed ratio of our time to PEFT's)
            let speed = [
                ("minilm_step/lora", "LoRA step", 0.8),
                ("minilm_step/dora", "DoRA step", 0.8),
                ("minilm_step/full", "full fine-tuning step", 1.0),
                ("minilm_inference/base", "base inference", 0.8),
            ];
            if let Some(t) = get("minilm_step/lora_small") {
                writeln!(
                    s,
                    "- LoRA step at batch 4 × 32 ≤ 0.06 s: {} — {}",
                    secs(t),
                    check(t <= 0.06)
                )?;
            }
            for (id, label, limit) in speed {
                if let (Some(ours), Some(theirs)) = (get(id), p.get(id)) {
                    let ratio = ours / theirs.median;
                    writeln!(
                        s,
                        "- {label} ≤ {limit} × PEFT's time: {ratio:.2} × — {}",
                        check(ratio <= limit)
                    )?;
                }
            }
            let worst = MODEL_CASES
                .iter()
                .filter_map(|&(id, _)| {
                    let (_, mode) = peer_mode(id)?;
                    Some((mode, *peaks.get(id)?, p.get(id)?.peak_kib))
                })
                .collect::<Vec<_>>();
            if !worst.is_empty() {
                let all = worst
                    .iter()
                    .all(|&(_, ours, theirs)| ours as f64 <= 0.6 * theirs as f64);
                let list = worst
                    .iter()
                    .map(|(m, ours, theirs)| format!("{m} {} vs {}", mib(*ours), mib(*theirs)))
                    .collect::<Vec<_>>()
                    .join(", ");
                writeln!(s, "- peak memory ≤ 0.6 × PEFT's: {list} — {}", check(all))?;
            }
        }
        None => writeln!(
            s,
            "- speed and memory against PEFT: not measured in this run (`--peer`)"
        )?,
    }
    writeln!(s)?;

    render_decoder(&mut s, r, measured, peers)?;

    // Layer level.
    let table = |s: &mut String, group: &str, title: &str, note: &str| -> Result<()> {
        let mut rows: Vec<_> = r
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{group}/")))
            .collect();
        // By shape, then variant (`variant/shape`).
        rows.sort_by_key(|(k, _)| {
            let (variant, shape) = k.rsplit_once('/').unwrap_or((k, ""));
            let size: Vec<usize> = shape.split('x').filter_map(|d| d.parse().ok()).collect();
            (size, variant.to_string())
        });
        if rows.is_empty() {
            return Ok(());
        }
        writeln!(s, "## {title}\n\n{note}\n")?;
        writeln!(s, "| benchmark | median [95% CI] |\n|---|---|")?;
        for (k, t) in rows {
            writeln!(
                s,
                "| {} | {} [{}, {}] |",
                &k[group.len() + 1..],
                secs(t.median),
                secs(t.low),
                secs(t.high)
            )?;
        }
        writeln!(s)?;
        Ok(())
    };
    table(
        &mut s,
        "layer_forward",
        "Adapted layer, forward (`benches/benches/adapter_layer.rs`)",
        "2048 tokens (16 × 128), rank 8, `variant/in x out`; `merged` is the plain layer after merging.",
    )?;
    table(
        &mut s,
        "layer_forward_backward",
        "Adapted layer, forward + backward",
        "Same shapes; gradients of the sum of the output.",
    )?;
    table(
        &mut s,
        "regularizer_forward_backward",
        "Orthogonality regulariser of one layer, forward + backward (`benches/benches/regularizer.rs`)",
        "Direct form (Gram of the normalised direction) vs low-rank form (cached `W0·W0ᵀ`).",
    )?;
    table(
        &mut s,
        "engine_iteration",
        "Engine iteration on a small model (`benches/benches/bilevel_step.rs`)",
        "Two adapted 384×384 layers and a 2-way head, 512 tokens, MSE: the engine's own overhead.",
    )?;
    writeln!(
        s,
        "Reproduce: `cargo xtask assets minilm smollm2 && cargo xtask bench{}{}`.",
        if o.quick { " --quick" } else { "" },
        if o.peer { " --peer" } else { "" }
    )?;
    Ok(s)
}

/// SmolLM2-135M's parameters, all multiplied per token (the tied LM head included): their f32
/// bytes are what one of transformers' decoding steps reads.
const SMOLLM2_PARAMS: f64 = 134.5e6;

/// The bytes one step of our host decoder reads (`bidora_models::host_llama`): the file's
/// 106.2 M Q4_1 weights at 24 bytes a block of 32 (two f32 scales, 16 bytes of nibbles), its
/// 28.3 M Q8_0 weights at 36 (one f32 scale, 32 bytes), and the f32 norms.
const SMOLLM2_BLOCK_BYTES: f64 =
    106_168_320.0 * 24.0 / 32.0 + 28_311_552.0 * 36.0 / 32.0 + 35_136.0 * 4.0;

/// The floor of a decoder case in seconds: a step's matrix-product work (≈1.14 TFLOP at 8 × 256:
/// ≈278 MFLOP a token forward, attention included, twice that with the input gradients) at the
/// GEMM rate; a generation call's larger of its work at the GEMM rate and its 128 passes over
/// the weights (`weight_bytes`: what that side reads a step) at the memory read rate.
fn decoder_floor(
    id: &str,
    gemm: Option<f64>,
    memory: Option<f64>,
    weight_bytes: f64,
) -> Option<f64> {
    let per_token = 2.0 * SMOLLM2_PARAMS;
    match id {
        "smollm2_step/lora" | "smollm2_step/dora" => Some(1138.0 / gemm?),
        "smollm2_generate/batch1" | "smollm2_generate/batch8" => {
            let rows = if id.ends_with("batch8") { 8.0 } else { 1.0 };
            // The prompt's 32 positions, then 127 passes of one position.
            let work = rows * (32.0 + 127.0) * per_token / 1e9 / gemm?;
            let reads = 128.0 * weight_bytes / memory?;
            Some(work.max(reads))
        }
        _ => None,
    }
}

/// New tokens of one call of a generation case, `None` for the other cases.
fn generated_tokens(id: &str) -> Option<f64> {
    match id {
        "smollm2_generate/batch1" => Some(128.0),
        "smollm2_generate/batch8" => Some(8.0 * 128.0),
        _ => None,
    }
}

/// The SmolLM2-135M section: its table against transformers + PEFT and issue 16's targets.
fn render_decoder(
    s: &mut String,
    r: &BTreeMap<String, Timing>,
    measured: &Measured,
    peers: Option<&BTreeMap<&'static str, Peer>>,
) -> Result<()> {
    let gemm = gemm_rate(r);
    let memory = r
        .get(MEMORY_CASE)
        .map(|t| 512.0 * 1024.0 * 1024.0 / t.median);
    writeln!(
        s,
        "## SmolLM2-135M from its Q4_1 GGUF file (`benches/benches/smollm2.rs`)\n"
    )?;
    writeln!(
        s,
        "Training: one optimiser step (forward, backward, AdamW) at batch 8 × 256 tokens, next-token\n\
         loss on every position, LoRA / DoRA r = 8, alpha 16, dropout 0.1 on `q_proj` and `v_proj`\n\
         (DoRA with PEFT's detached norm). Generation: greedy, 128 new tokens after a 32-token\n\
         prompt, KV cache, no stop; batch 1 is the CLI's `generate --prompt` path. Training runs on\n\
         the weights dequantised to f32; generation on the host decoder (`bidora_models::host_llama`),\n\
         which reads the file's Q4_1/Q8_0 blocks and dequantises them in registers to the same f32\n\
         values (its logits equal the f32 model's to 1e-5 of their largest, tested). The peer\n\
         (`scripts/bench/peft_decoder.py`) loads the same GGUF file with transformers, which\n\
         dequantises it to f32, and runs the same ids and settings (`model.generate` with its\n\
         default dynamic cache, PEFT for training).\n"
    )?;
    writeln!(
        s,
        "The floor: a step's ≈1.14 TFLOP at the GEMM rate above; a generation call's larger of its\n\
         work at the GEMM rate and 128 reads of the weights at the memory read rate measured in this\n\
         run ({}): {:.0} MB a step for bidora's blocks, {:.0} MB for the peer's f32 weights.\n",
        memory.map_or("not measured".to_string(), |m| format!(
            "{:.1} GB/s, the last row",
            m / 1e9
        )),
        SMOLLM2_BLOCK_BYTES / 1e6,
        4.0 * SMOLLM2_PARAMS / 1e6,
    )?;
    let mut header =
        "| case | median [95% CI] | tokens/s | × floor | peak RSS | busy cores |".to_string();
    let mut rule = "|---|---|---|---|---|---|".to_string();
    if peers.is_some() {
        header.push_str(
            " peer median | peer tokens/s | bidora / peer time | peer × floor | peer peak RSS | peer busy cores |",
        );
        rule.push_str("---|---|---|---|---|---|");
    }
    writeln!(s, "{header}\n{rule}")?;
    let rate = |id: &str, median: f64| {
        generated_tokens(id).map_or(String::new(), |n| format!("{:.1}", n / median))
    };
    let over_floor = |id: &str, median: f64, bytes: f64| {
        decoder_floor(id, gemm, memory, bytes)
            .map_or(String::new(), |f| format!("{:.2}", median / f))
    };
    for &(id, label) in DECODER_CASES {
        let Some(t) = r.get(id) else {
            writeln!(s, "| {label} | not measured | | | | |")?;
            continue;
        };
        write!(
            s,
            "| {label} | {} [{}, {}] | {} | {} | {} | {} |",
            secs(t.median),
            secs(t.low),
            secs(t.high),
            rate(id, t.median),
            over_floor(id, t.median, SMOLLM2_BLOCK_BYTES),
            measured.peaks.get(id).map_or(String::new(), |&k| mib(k)),
            measured
                .busy
                .get(id)
                .map_or(String::new(), |b| format!("{b:.2}")),
        )?;
        match peers.map(|p| p.get(id)) {
            Some(Some(p)) => write!(
                s,
                " {} | {} | {:.2} | {} | {} | {:.2} |",
                secs(p.median),
                rate(id, p.median),
                t.median / p.median,
                over_floor(id, p.median, 4.0 * SMOLLM2_PARAMS),
                mib(p.peak_kib),
                p.busy
            )?,
            Some(None) => write!(s, " | | | | | |")?,
            None => {}
        }
        writeln!(s)?;
    }
    writeln!(s, "\n### Targets (issue 16)\n")?;
    let Some(p) = peers else {
        writeln!(
            s,
            "- speed and memory against transformers + PEFT: not measured in this run (`--peer`)\n"
        )?;
        return Ok(());
    };
    let check = |ok: bool| if ok { "met" } else { "**not met**" };
    let pair = |id: &str| Some((r.get(id)?.median, p.get(id)?));
    for (id, label) in [
        ("smollm2_step/lora", "LoRA step"),
        ("smollm2_step/dora", "DoRA step"),
    ] {
        if let Some((ours, theirs)) = pair(id) {
            let ratio = ours / theirs.median;
            writeln!(
                s,
                "- {label} ≤ PEFT's time: {ratio:.2} × — {}",
                check(ratio <= 1.0)
            )?;
        }
    }
    for (id, label) in [
        ("smollm2_generate/batch1", "generation, batch 1"),
        ("smollm2_generate/batch8", "generation, batch 8"),
    ] {
        if let Some((ours, theirs)) = pair(id) {
            let speedup = theirs.median / ours;
            writeln!(
                s,
                "- {label} ≥ 1.5 × transformers' tokens/s: {speedup:.2} × — {}",
                check(speedup >= 1.5)
            )?;
        }
    }
    let memory: Vec<_> = DECODER_CASES
        .iter()
        .filter_map(|&(id, _)| Some((id, *measured.peaks.get(id)?, p.get(id)?.peak_kib)))
        .collect();
    if !memory.is_empty() {
        let list = memory
            .iter()
            .map(|(id, ours, theirs)| format!("{id} {} vs {}", mib(*ours), mib(*theirs)))
            .collect::<Vec<_>>()
            .join(", ");
        let all = memory.iter().all(|&(_, ours, theirs)| ours <= theirs);
        writeln!(s, "- peak memory ≤ the peer's: {list} — {}", check(all))?;
    }
    writeln!(s)?;
    Ok(())
}

fn print_summary(r: &BTreeMap<String, Timing>, peer_run: Option<&PeerRun>) {
    let peers = peer_run.map(|p| &p.cases);
    println!();
    println!(
        "{:<32} {:>12} {:>12} {:>10}",
        "case", "bidora", "PEFT", "ratio"
    );
    for &(id, label) in MODEL_CASES.iter().chain(DECODER_CASES) {
        let Some(t) = r.get(id) else { continue };
        let peer = peers.and_then(|p| p.get(id));
        println!(
            "{:<32} {:>12} {:>12} {:>10}",
            label,
            secs(t.median),
            peer.map_or("-".into(), |p| secs(p.median)),
            peer.map_or("-".into(), |p| format!("{:.2}", t.median / p.median)),
        );
    }
}
