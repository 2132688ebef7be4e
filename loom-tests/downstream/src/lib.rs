//! A user's crate, written as ordinary code over shmpipe's in-process rings, and modelled with
//! loom in `tests/models.rs` (see `README.md`: "Modelling your own code with shmpipe under loom").
//!
//! Three small protocols, each generic over shmpipe's [`Sender`] and [`Receiver`] traits:
//! - [`rpc`]: request/ack over two SPSC rings. A client sends a job on one ring and waits for its
//!   ack on the other; the server leaves the result on a shared [`rpc::Board`] and acks. Uses
//!   `send_timeout`/`recv_timeout` (client) and `send`/`recv` (server).
//! - [`work`]: a dispatcher hands jobs to two workers over one MPMC ring (`send`, `recv`).
//! - [`fanout`]: a publisher sends every tick to two subscribers over a broadcast ring (`send`,
//!   `recv`, `recv_timeout`).
//!
//! The only loom-specific code is [`sync`]: the atomics and `yield_now` this crate uses itself
//! come from loom under `--cfg loom` and from std otherwise. shmpipe does the same for its own.
//!
//! With the `wrong-protocol` feature [`rpc::Client::call`] has a deliberate bug, explained
//! there, which the loom model finds and an ordinary test on x86 essentially never would.

use shmpipe::{Receiver, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender};
use std::time::Duration;

/// The synchronisation this crate uses beside the rings: loom's under `--cfg loom`, std's
/// otherwise (the pattern loom's documentation recommends, and tokio's `loom` module).
pub mod sync {
    #[cfg(loom)]
    pub use loom::sync::atomic::AtomicU64;
    #[cfg(loom)]
    pub use loom::thread::yield_now;
    #[cfg(not(loom))]
    pub use std::sync::atomic::AtomicU64;
    #[cfg(not(loom))]
    pub use std::thread::yield_now;
}

/// How long one timed wait lasts before the caller looks up (counts a tick) and waits again.
/// Real time outside loom; in a loom model a timed wait never sleeps: it times out as soon as it
/// would have to (see `README.md`, "Blocking calls and timeouts in a model").
pub const TICK: Duration = Duration::from_millis(50);

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The peer closed its end (or died).
    Gone,
    /// A message that does not follow the protocol.
    Protocol(String),
    /// Any other channel error, as text.
    Channel(String),
}

fn channel_error(e: impl std::fmt::Display) -> CallError {
    CallError::Channel(e.to_string())
}

fn word(msg: &[u8]) -> Result<u32, CallError> {
    let bytes: [u8; 4] = msg
        .try_into()
        .map_err(|_| CallError::Protocol(format!("a 4-byte message expected, got {msg:?}")))?;
    Ok(u32::from_le_bytes(bytes))
}

/// Request/ack over two SPSC rings, with results on a shared board.
pub mod rpc {
    use super::*;
    use crate::sync::AtomicU64;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    /// Where the server leaves each job's result (indexed by request id), and how many jobs it
    /// has finished.
    pub struct Board {
        results: Vec<AtomicU64>,
        finished: AtomicU64,
    }

    impl Board {
        /// A board for request ids `0..jobs`.
        pub fn new(jobs: usize) -> Self {
            Board {
                results: (0..jobs).map(|_| AtomicU64::new(0)).collect(),
                finished: AtomicU64::new(0),
            }
        }

        fn post(&self, id: u32, value: u64) -> Result<(), CallError> {
            let slot = self
                .results
                .get(id as usize)
                .ok_or_else(|| CallError::Protocol(format!("request id {id} has no place on the board")))?;
            // Relaxed: the client reads it only after receiving this job's ack, and the ring
            // orders everything before `send` before everything after the matching `recv`.
            slot.store(value, Relaxed);
            // Relaxed: a statistic for monitoring (`finished`); it orders nothing.
            self.finished.fetch_add(1, Relaxed);
            Ok(())
        }

        /// The result of request `id`: only meaningful once its ack was received.
        pub fn result(&self, id: u32) -> u64 {
            // Relaxed: see `post`.
            self.results[id as usize].load(Relaxed)
        }

        /// How many jobs the server has finished (for monitoring: a count, not a signal).
        pub fn finished(&self) -> u64 {
            // Relaxed: see `post`.
            self.finished.load(Relaxed)
        }
    }

    /// A request: its id and the number to square, 4 bytes each, little-endian.
    fn request(id: u32, x: u32) -> [u8; 8] {
        let mut msg = [0; 8];
        msg[..4].copy_from_slice(&id.to_le_bytes());
        msg[4..].copy_from_slice(&x.to_le_bytes());
        msg
    }

    /// Serves requests until the client closes its end: squares each number, posts the result
    /// on `board`, then acks with the request's id. Returns how many it served.
    pub fn serve(
        mut requests: impl Receiver,
        mut acks: impl Sender,
        board: &Board,
    ) -> Result<u32, CallError> {
        let mut buf = Vec::new();
        let mut served = 0;
        loop {
            match requests.recv(&mut buf) {
                Ok(()) => {}
                Err(RecvError::Disconnected) => return Ok(served),
                Err(e) => return Err(channel_error(e)),
            }
            if buf.len() != 8 {
                return Err(CallError::Protocol(format!(
                    "an 8-byte request expected, got {buf:?}"
                )));
            }
            let (id, x) = (word(&buf[..4])?, u64::from(word(&buf[4..])?));
            board.post(id, x * x)?;
            served += 1;
            match acks.send(&id.to_le_bytes()) {
                Ok(()) => {}
                // The client has closed. It may still have read this ack first: `Disconnected`
                // from a send does not say the message was not delivered (the loom model found
                // that when this counted only acks sent with `Ok`).
                Err(SendError::Disconnected) => return Ok(served),
                Err(e) => return Err(channel_error(e)),
            }
        }
    }

    /// The client: one call at a time.
    pub struct Client<S, R> {
        requests: S,
        acks: R,
        board: Arc<Board>,
        next: u32,
        buf: Vec<u8>,
        /// Timed waits that ended with nothing (the ring still full, or no ack yet): where a real
        /// client would report progress or check for cancellation before waiting again.
        pub ticks: u32,
    }

    impl<S: Sender, R: Receiver> Client<S, R> {
        /// A client sending on `requests`, receiving acks on `acks`, reading results on `board`.
        pub fn new(requests: S, acks: R, board: Arc<Board>) -> Self {
            Client {
                requests,
                acks,
                board,
                next: 0,
                buf: Vec::new(),
                ticks: 0,
            }
        }

        /// Asks the server for `x * x` and waits for the answer.
        ///
        /// The ack is what makes the result visible: the server posts the result, then sends the
        /// ack; the ring's `send` publishes with Release and `recv` reads with Acquire, so the
        /// Relaxed result store happens before the client's Relaxed load.
        #[cfg(not(feature = "wrong-protocol"))]
        pub fn call(&mut self, x: u32) -> Result<u64, CallError> {
            let id = self.send_request(x)?;
            self.wait_for_ack(id)?;
            Ok(self.board.result(id))
        }

        /// THE BUG (feature `wrong-protocol`): "the ack only says what the board's `finished`
        /// count already says, and polling the board is faster", so this waits until `finished`
        /// passes the request's id, reads the result, and only then takes the ack off its ring
        /// (so that the ring does not fill up).
        ///
        /// `finished` is stored and loaded Relaxed: seeing the server's increment does not make
        /// the server's earlier result store visible (nothing orders the two). On x86 the
        /// hardware happens to keep stores in order and this passes every stress test; on ARM, or
        /// after a compiler reordering, it returns the board's stale 0. Loom explores every value
        /// a Relaxed load may return under the C11 memory model, and its model fails:
        /// `call(3)` is `Ok(0)`, not `Ok(9)`. Either fix works: wait for the ack before reading
        /// (the correct `call`), or make the count a Release increment read with Acquire.
        #[cfg(feature = "wrong-protocol")]
        pub fn call(&mut self, x: u32) -> Result<u64, CallError> {
            let id = self.send_request(x)?;
            while self.board.finished() <= u64::from(id) {
                crate::sync::yield_now();
            }
            let result = self.board.result(id);
            self.wait_for_ack(id)?;
            Ok(result)
        }

        /// Sends the next request, waiting a tick at a time while the ring is full.
        fn send_request(&mut self, x: u32) -> Result<u32, CallError> {
            let id = self.next;
            self.next += 1;
            let msg = request(id, x);
            loop {
                match self.requests.send_timeout(&msg, TICK) {
                    Ok(()) => return Ok(id),
                    Err(SendTimeoutError::Timeout) => self.ticks += 1,
                    Err(SendTimeoutError::Disconnected) => return Err(CallError::Gone),
                    Err(e) => return Err(channel_error(e)),
                }
            }
        }

        /// Waits a tick at a time for the ack of request `id`.
        fn wait_for_ack(&mut self, id: u32) -> Result<(), CallError> {
            loop {
                match self.acks.recv_timeout(&mut self.buf, TICK) {
                    Ok(()) if word(&self.buf)? == id => return Ok(()),
                    Ok(()) => {
                        return Err(CallError::Protocol(format!(
                            "ack {:?} while waiting for {id}",
                            self.buf
                        )))
                    }
                    Err(RecvTimeoutError::Timeout) => self.ticks += 1,
                    Err(RecvTimeoutError::Disconnected) => return Err(CallError::Gone),
                    Err(e) => return Err(channel_error(e)),
                }
            }
        }
    }
}

/// A dispatcher and workers over one MPMC ring.
pub mod work {
    use super::*;

    /// Sends every job (a `u32`), waiting while the ring is full, then closes by returning (the
    /// caller drops `jobs_tx`, which tells the workers there is no more).
    pub fn dispatch(jobs_tx: &mut impl Sender, jobs: &[u32]) -> Result<(), CallError> {
        for job in jobs {
            match jobs_tx.send(&job.to_le_bytes()) {
                Ok(()) => {}
                Err(SendError::Disconnected) => return Err(CallError::Gone),
                Err(e) => return Err(channel_error(e)),
            }
        }
        Ok(())
    }

    /// A worker: takes jobs until the dispatcher has gone and the ring is empty; returns the
    /// jobs it did, in the order it took them.
    pub fn work(mut jobs_rx: impl Receiver) -> Result<Vec<u32>, CallError> {
        let mut buf = Vec::new();
        let mut done = Vec::new();
        loop {
            match jobs_rx.recv(&mut buf) {
                Ok(()) => done.push(word(&buf)?),
                Err(RecvError::Disconnected) => return Ok(done),
                Err(e) => return Err(channel_error(e)),
            }
        }
    }
}

/// A publisher and subscribers over a broadcast ring.
pub mod fanout {
    use super::*;

    /// Publishes ticks `0..n`, waiting while the slowest subscriber is a ring behind.
    pub fn publish(tx: &mut impl Sender, n: u32) -> Result<(), CallError> {
        for tick in 0..n {
            match tx.send(&tick.to_le_bytes()) {
                Ok(()) => {}
                Err(SendError::Disconnected) => return Err(CallError::Gone),
                Err(e) => return Err(channel_error(e)),
            }
        }
        Ok(())
    }

    /// Receives every tick until the publisher has gone, waiting as long as it takes.
    pub fn follow(mut rx: impl Receiver) -> Result<Vec<u32>, CallError> {
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        loop {
            match rx.recv(&mut buf) {
                Ok(()) => seen.push(word(&buf)?),
                Err(RecvError::Disconnected) => return Ok(seen),
                Err(e) => return Err(channel_error(e)),
            }
        }
    }

    /// Receives every tick until the publisher has gone, a tick at a time (as a subscriber that
    /// also has housekeeping to do between waits would). Returns the ticks and how many waits
    /// timed out.
    pub fn follow_in_ticks(mut rx: impl Receiver) -> Result<(Vec<u32>, u32), CallError> {
        let mut buf = Vec::new();
        let (mut seen, mut timeouts) = (Vec::new(), 0);
        loop {
            match rx.recv_timeout(&mut buf, TICK) {
                Ok(()) => seen.push(word(&buf)?),
                Err(RecvTimeoutError::Timeout) => timeouts += 1,
                Err(RecvTimeoutError::Disconnected) => return Ok((seen, timeouts)),
                Err(e) => return Err(channel_error(e)),
            }
        }
    }
}
