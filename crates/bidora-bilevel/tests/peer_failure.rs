//! A peer that dies ends a data-parallel run with an error on the others, not a hang: at once
//! when it panics, after the timeout when it silently stops answering. Its own binary, since
//! a failed run leaves `burn-collective`'s process-wide state behind.

#![cfg(feature = "collective")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bidora_bilevel::collective::LocalPeers;
use bidora_bilevel::distributed::Collective;
use bidora_bilevel::TrainError;
use burn::backend::NdArray;
use burn::tensor::Tensor;

type B = NdArray<f32>;

fn ones() -> Tensor<B, 1> {
    Tensor::ones([3], &Default::default())
}

/// Peer 0 sums three times; peer 1 sums once and then does `then`. Peer 0's result and how
/// long it took.
fn run_pair(timeout: Duration, then: fn()) -> (Result<Vec<f32>, TrainError>, Duration) {
    let peers = LocalPeers::new(2, timeout);
    std::thread::scope(|scope| {
        let other = peers.clone();
        let one = scope.spawn(move || {
            let me = other.join::<B>(1, Default::default()).unwrap();
            me.all_reduce_sum(ones()).unwrap();
            then();
        });
        let me = peers.join::<B>(0, Default::default()).unwrap();
        let first = me.all_reduce_sum(ones()).unwrap();
        let started = Instant::now();
        let out = (|| {
            me.all_reduce_sum(ones())?;
            me.all_reduce_sum(ones())
        })();
        let elapsed = started.elapsed();
        let _ = one.join();
        let sum: Vec<f32> = first.into_data().to_vec().unwrap();
        assert_eq!(
            sum,
            vec![2.0; 3],
            "the exchange before the failure sums both peers"
        );
        (out.map(|t| t.into_data().to_vec().unwrap()), elapsed)
    })
}

#[test]
fn a_dead_peer_is_an_error_not_a_hang() {
    // A peer that panics: its fellow fails at its next exchange, long before the timeout.
    let (out, elapsed) = run_pair(Duration::from_secs(60), || panic!("peer 1 dies"));
    let err = out.err().unwrap();
    assert!(
        matches!(
            err,
            TrainError::Peer {
                rank: 0,
                world: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // A failed run leaves an all-reduce pending in burn-collective's process-wide server.
    burn_collective::reset_collective::<B>();
    // A peer that leaves (returns early): an exchange its fellow began before it left waits
    // for it until the timeout; one begun after would be summed over the peer left alone,
    // which the count of peers in every exchange catches at once.
    let (out, elapsed) = run_pair(Duration::from_secs(2), || {});
    let err = out.err().unwrap();
    let message = err.to_string();
    assert!(
        message.contains("a peer has left the run") || message.contains("within 2 s"),
        "{err}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    burn_collective::reset_collective::<B>();
    // A peer that stops answering without a word: an error after the timeout.
    let (out, elapsed) = run_pair(Duration::from_secs(1), || {
        std::thread::sleep(Duration::from_secs(4))
    });
    let err = out.err().unwrap();
    assert!(err.to_string().contains("within 1 s"), "{err}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}
