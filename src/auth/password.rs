//! Password hashing with argon2id on a fixed pool of threads.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Why a password could not be checked or hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing thread is busy and the wait queue is full: the caller
    /// answers 503 with `Retry-After` at once instead of queueing without
    /// bound (each hash holds 19 MiB while it runs).
    #[error("password hashing is saturated")]
    Busy { retry_after_ms: u64 },
    /// The pool is gone (shutdown) or argon2 failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Hashes and verifies passwords off the async runtime, on a fixed number of
/// threads with a short wait queue.
///
/// Parameters follow OWASP's argon2id baseline (19 MiB, 2 passes, 1 lane):
/// about 20 ms per hash on one core, slow enough to make offline guessing
/// expensive, cheap enough that login throttling, not CPU, is the limit.
///
/// Why a pool of its own rather than `spawn_blocking`: the blocking pool grows
/// to 512 threads, so a burst of sign-ins ran hundreds of 19 MiB hashes at
/// once (11 GiB of RSS for 300 in flight), and each new thread left a malloc
/// arena behind. Here at most `threads` hashes run and `queue` wait; memory
/// is bounded by `threads × 19 MiB` whatever the load, and a request beyond
/// that is refused in microseconds, not after the request timeout.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    argon: Argon2<'static>,
    /// Verified against when the email is unknown, so a login takes the same
    /// time whether or not the account exists.
    dummy_hash: String,
    jobs: flume::Sender<Job>,
    /// One permit per hash running or waiting (`threads + queue`): a request
    /// that finds none is refused. Counting here, not in the channel, keeps
    /// the bound exact even while a thread is between jobs.
    admitted: Arc<Semaphore>,
    threads: usize,
    queue: usize,
}

type Job = Box<dyn FnOnce() + Send>;

/// The OWASP baseline: m = 19 MiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// What one hash costs on one core of the reference machine; the basis of the
/// `Retry-After` estimate.
const HASH_COST: Duration = Duration::from_millis(25);

impl Passwords {
    /// A pool of `threads` hashing threads (at least 1) with room for `queue`
    /// waiting requests.
    ///
    /// # Panics
    /// If a thread cannot be spawned at start-up.
    pub fn new(threads: usize, queue: usize) -> Self {
        // The constants are within argon2's documented bounds.
        let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon
            .hash_password(b"dummy password for timing", &salt)
            .expect("hashing a constant cannot fail")
            .to_string();
        let threads = threads.max(1);
        let (jobs, rx) = flume::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                // Ends when every `Passwords` clone (the sender) is dropped.
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .expect("spawning a password hashing thread");
        }
        let admitted = Arc::new(Semaphore::new(threads + queue));
        Passwords { inner: Arc::new(Inner { argon, dummy_hash, jobs, admitted, threads, queue }) }
    }

    /// One thread per core and a queue of four per thread: a full queue is
    /// about 100 ms of work.
    pub fn sized_to_cores() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, cores * 4)
    }

    /// Runs `f` on the pool, or refuses at once when the queue is full.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let Ok(permit) = self.inner.admitted.clone().try_acquire_owned() else {
            // Everything admitted drains in about (threads + queue) / threads
            // hash times.
            let ahead = (self.inner.threads + self.inner.queue) as u64;
            let wait = HASH_COST.as_millis() as u64 * ahead.div_ceil(self.inner.threads as u64);
            return Err(HashError::Busy { retry_after_ms: wait.max(1000) });
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = f();
            // The slot is free before the caller hears the answer: a client
            // that signs in again right after its answer must not find its
            // own finished hash still counted (seen under load in CI).
            drop::<OwnedSemaphorePermit>(permit);
            let _ = tx.send(out);
        });
        if self.inner.jobs.send(job).is_err() {
            return Err(HashError::Failed(anyhow::anyhow!("password hashing pool is gone")));
        }
        rx.await.map_err(|_| HashError::Failed(anyhow::anyhow!("password hashing thread panicked")))
    }

    /// # Errors
    /// [`HashError::Busy`] when the pool is saturated.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let inner = self.inner.clone();
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            inner
                .argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
        .map_err(HashError::Failed)
    }

    /// Verifies `password` against `hash`, or against the dummy hash when
    /// `hash` is `None` (and then always fails).
    ///
    /// # Errors
    /// [`HashError::Busy`] when the pool is saturated.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, HashError> {
        let inner = self.inner.clone();
        self.run(move || {
            let real = hash.is_some();
            let hash = hash.as_deref().unwrap_or(&inner.dummy_hash);
            let parsed = PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
            Ok(inner.argon.verify_password(password.as_bytes(), &parsed).is_ok() && real)
        })
        .await?
        .map_err(HashError::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_a_full_queue_is_refused_at_once() {
        let pw = Passwords::new(1, 1);
        let hash = pw.hash("correct horse".into()).await.unwrap();
        assert!(pw.verify("correct horse".into(), Some(hash.clone())).await.unwrap());
        assert!(!pw.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!pw.verify("anything".into(), None).await.unwrap());

        // One job holds the only thread, one waits in the queue of one.
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let pw = pw.clone();
            async move {
                pw.run(move || {
                    started_tx.send(()).unwrap();
                    gate.recv().unwrap();
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
        let queued = tokio::spawn({
            let pw = pw.clone();
            async move { pw.hash("queued".into()).await }
        });
        while pw.inner.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // The next one is refused without waiting for either.
        match pw.hash("refused".into()).await {
            Err(HashError::Busy { retry_after_ms }) => assert!(retry_after_ms >= 1000),
            other => panic!("expected Busy, got {other:?}"),
        }
        release.send(()).unwrap();
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
    }
}
