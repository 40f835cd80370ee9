//! [`Collective`] over Burn's `burn-collective` (feature `collective`): the peers of a run are
//! threads of one process, one per device, and every sum goes through
//! `burn_collective::all_reduce`.
//!
//! `burn-collective`'s calls block until every peer has made the same call, with no timeout.
//! So each peer's calls run on a worker thread of their own and the peer waits for the answer
//! with a deadline, polling a flag its fellow peers raise when one of them fails: a peer that
//! errors or dies ends the run on every peer with an error (after at most the timeout), never
//! with a hang.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::distributed::Collective;
use crate::TrainError;

/// How long a peer waits for the others by default: long enough for rank 0's evaluations and
/// checkpoints, which the other peers wait through.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long a failed peer's drop waits for its worker to unregister.
const GRACE: Duration = Duration::from_secs(1);

/// How often a waiting peer looks at the run's failure flag.
const POLL: Duration = Duration::from_millis(50);

type Primitive<B> = <B as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive;
type Reply<B> = Result<Primitive<B>, String>;

/// The peers of one run inside this process, before each takes its [`BurnCollective`].
#[derive(Clone, Debug)]
pub struct LocalPeers {
    world: usize,
    /// The first `PeerId` of this run: ids are never reused within a process, so that a
    /// failed run's late messages cannot touch a later run.
    first_id: u32,
    timeout: Duration,
    failed: Arc<AtomicBool>,
}

impl LocalPeers {
    /// A run of `world` peers (threads of this process); a peer waits at most `timeout` for
    /// the others at each exchange.
    pub fn new(world: usize, timeout: Duration) -> Self {
        static NEXT_ID: AtomicU32 = AtomicU32::new(0);
        let world = world.max(1);
        LocalPeers {
            world,
            first_id: NEXT_ID.fetch_add(world as u32, Ordering::SeqCst),
            timeout,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The number of peers.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Peer `rank`'s end, on `device`: registers with `burn-collective` (which waits for every
    /// peer to register) on the peer's worker thread.
    pub fn join<B: Backend>(
        &self,
        rank: usize,
        device: B::Device,
    ) -> Result<BurnCollective<B>, TrainError> {
        if rank >= self.world {
            return Err(TrainError::Config(format!(
                "peer rank {rank} is outside a run of {} peers",
                self.world
            )));
        }
        let config = CollectiveConfig::default().with_num_devices(self.world);
        let (jobs, inbox) = mpsc::channel::<Job<B>>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let id = PeerId(self.first_id + rank as u32);
        let worker = std::thread::Builder::new()
            .name(format!("bidora-peer-{rank}"))
            .spawn(move || serve::<B>(id, device, config, ready_tx, inbox))
            .map_err(|e| TrainError::Config(format!("cannot start peer {rank}'s worker: {e}")))?;
        let me = BurnCollective {
            rank,
            world: self.world,
            jobs: Some(jobs),
            worker: Some(worker),
            peers: self.clone(),
        };
        me.wait(&ready, "registering with the other peers")?;
        Ok(me)
    }

    /// Marks the run as failed: every peer's pending and next exchange returns an error.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether a peer has failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

struct Job<B: Backend> {
    tensor: Primitive<B>,
    reply: Sender<Reply<B>>,
}

/// The worker: registers, then serves all-reduces until its peer drops its end.
fn serve<B: Backend>(
    id: PeerId,
    device: B::Device,
    config: CollectiveConfig,
    ready: Sender<Result<(), String>>,
    inbox: Receiver<Job<B>>,
) {
    let registered = burn_collective::register::<B>(id, device, config);
    let ok = registered.is_ok();
    let _ = ready.send(registered.map_err(|e| format!("{e:?}")));
    if !ok {
        return;
    }
    while let Ok(job) = inbox.recv() {
        let sum = burn_collective::all_reduce::<B>(id, job.tensor, ReduceOperation::Sum)
            .map_err(|e| format!("{e:?}"));
        let _ = job.reply.send(sum);
    }
    let _ = burn_collective::finish_collective::<B>(id);
}

/// One peer's end of a run's collective (made by [`LocalPeers::join`]).
pub struct BurnCollective<B: Backend> {
    rank: usize,
    world: usize,
    jobs: Option<Sender<Job<B>>>,
    worker: Option<JoinHandle<()>>,
    peers: LocalPeers,
}

impl<B: Backend> BurnCollective<B> {
    /// Waits for `reply` until the deadline, giving up early when another peer has failed
    /// (an answer already there wins: the peers' last exchange may end one of them first).
    fn wait<T>(&self, reply: &Receiver<Result<T, String>>, what: &str) -> Result<T, TrainError> {
        let deadline = Instant::now() + self.peers.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match reply.recv_timeout(left.min(POLL)) {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => return Err(self.fail(what, format!("burn-collective: {e}"))),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.fail(what, "the peer's worker thread ended".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.peers.has_failed() {
                return Err(self.error(what, "another peer of the run failed".into()));
            }
            if left.is_zero() {
                let why = format!(
                    "no answer from every peer within {:.0} s (a peer has stopped or died)",
                    self.peers.timeout.as_secs_f64()
                );
                return Err(self.fail(what, why));
            }
        }
    }

    /// Marks the run failed and describes why.
    fn fail(&self, what: &str, why: String) -> TrainError {
        self.peers.fail();
        self.error(what, why)
    }

    fn error(&self, what: &str, why: String) -> TrainError {
        TrainError::Peer {
            rank: self.rank,
            world: self.world,
            message: format!("{what}: {why}"),
        }
    }
}

impl<B: Backend> Collective<B> for BurnCollective<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    /// The sum of `[t, 1]` over the peers: its last element counts the peers that took part,
    /// since `burn-collective` sums over the peers still registered and a peer that has left
    /// would otherwise go unnoticed.
    fn all_reduce_sum(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>, TrainError> {
        if self.world == 1 {
            return Ok(t);
        }
        let n = t.dims()[0];
        let one = Tensor::ones([1], &t.device());
        let counted = Tensor::cat(vec![t, one], 0);
        let (reply, answer) = mpsc::channel();
        let job = Job {
            tensor: counted.into_primitive().tensor(),
            reply,
        };
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job).is_ok());
        if sent != Some(true) {
            return Err(self.fail("all-reduce", "the peer's worker thread ended".into()));
        }
        let sum = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
            self.wait(&answer, "all-reduce")?,
        ));
        let count: f32 = sum.clone().slice(n..n + 1).into_scalar().elem();
        if (count - self.world as f32).abs() > 0.5 {
            return Err(self.fail(
                "all-reduce",
                format!(
                    "{count} of the {} peers took part: a peer has left the run",
                    self.world
                ),
            ));
        }
        Ok(sum.slice(0..n))
    }
}

impl<B: Backend> Drop for BurnCollective<B> {
    /// Ends the worker (a peer that panics marks the run failed first). After a failure the
    /// worker may be blocked in a call the other peers will never make: it is then given a
    /// moment to end and otherwise left to end with the process.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.peers.fail();
        }
        drop(self.jobs.take());
        let Some(worker) = self.worker.take() else {
            return;
        };
        if self.peers.has_failed() {
            let deadline = Instant::now() + GRACE;
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !worker.is_finished() {
                return;
            }
        }
        let _ = worker.join();
    }
}
