//! CPU-heavy work (argon2id, RSA signing) on tokio's blocking pool, with a
//! semaphore bounding how many jobs run at once so a burst of logins queues
//! instead of spawning hundreds of 19 MiB hashes.
//!
//! New hashes (registrations) go through a [`Lane`] first: at most
//! `register_workers` of them hold or wait for a pool worker, and at most
//! `register_queue` more wait for the lane; beyond that [`HashError::Busy`]
//! at once. So a registration flood never has more than `register_workers`
//! jobs ahead of a login in the pool, and its queue is bounded.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::Argon2Config;

/// A hashing or pool failure (never a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("argon2: {0}")]
    Argon2(String),
    #[error("stored password hash is unreadable: {0}")]
    BadStoredHash(String),
    #[error("worker pool closed")]
    Closed,
    #[error("too many registrations waiting for a worker")]
    Busy,
}

/// A bounded share of the pool for one kind of job: `workers` may go to the
/// pool at once, `queue` more wait their turn, the rest are refused.
#[derive(Debug, Clone)]
pub struct Lane {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

impl Lane {
    /// A lane of `workers` (at least 1) with `queue` waiting places.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            admitted: Arc::new(Semaphore::new(workers.saturating_add(queue))),
            running: Arc::new(Semaphore::new(workers)),
        }
    }

    /// Runs `job` on `pool` in this lane, or [`HashError::Busy`] at once
    /// when the lane's queue is full.
    pub async fn run<T, F>(&self, pool: &CpuPool, job: F) -> Result<T, HashError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| HashError::Busy)?;
        let _running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        pool.run(job).await
    }
}

/// A bounded pool for CPU-heavy jobs.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
}

impl CpuPool {
    /// A pool running at most `workers` jobs at once.
    pub fn new(workers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// Runs `job` on the blocking pool once a permit is free.
    pub async fn run<T, F>(&self, job: F) -> Result<T, HashError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let result = job();
            drop(permit);
            result
        })
        .await
        .map_err(|_| HashError::Closed)
    }
}

/// Argon2id password hashing with a configured cost.
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    pool: CpuPool,
    new_hashes: Lane,
}

impl PasswordHasher {
    /// A hasher making new hashes at `cost` in the lane `new_hashes`,
    /// running every job on `pool`.
    pub fn new(cost: Argon2Config, pool: CpuPool, new_hashes: Lane) -> Result<Self, HashError> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        Ok(Self {
            params,
            pool,
            new_hashes,
        })
    }

    /// Hashes `password` into a PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`).
    pub fn hash_blocking(&self, password: &str) -> Result<String, HashError> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| HashError::Argon2(e.to_string()))
    }

    /// Checks `password` against a stored PHC string, with the cost recorded in it.
    pub fn verify_blocking(password: &str, stored: &str) -> Result<bool, HashError> {
        let parsed =
            PasswordHash::new(stored).map_err(|e| HashError::BadStoredHash(e.to_string()))?;
        match Argon2::default().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(HashError::Argon2(e.to_string())),
        }
    }

    /// [`Self::hash_blocking`] on the pool, in the new-hash lane.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let this = self.clone();
        self.new_hashes
            .run(&self.pool, move || this.hash_blocking(&password))
            .await?
    }

    /// [`Self::verify_blocking`] on the pool.
    pub async fn verify(&self, password: String, stored: String) -> Result<bool, HashError> {
        self.pool
            .run(move || Self::verify_blocking(&password, &stored))
            .await?
    }

    /// The pool, for other CPU-heavy work.
    pub fn pool(&self) -> &CpuPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let hasher = PasswordHasher::new(
            Argon2Config::insecure_for_tests(),
            CpuPool::new(2),
            Lane::new(1, 4),
        )
        .unwrap();
        let hash = hasher.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(
            hasher
                .verify("correct horse".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), hash.clone())
                .await
                .unwrap()
        );
        // A second hash of the same password uses another salt.
        assert_ne!(hash, hasher.hash("correct horse".into()).await.unwrap());
        assert!(matches!(
            hasher.verify("x".into(), "not a hash".into()).await,
            Err(HashError::BadStoredHash(_))
        ));
    }

    #[tokio::test]
    async fn a_full_lane_refuses_at_once_and_leaves_the_pool_to_others() {
        let pool = CpuPool::new(2);
        let lane = Lane::new(1, 1);
        let (release, gate) = std::sync::mpsc::sync_channel::<()>(0);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        // One job runs (held on the gate), one waits in the lane's queue.
        let running = tokio::spawn({
            let (lane, pool) = (lane.clone(), pool.clone());
            async move {
                lane.run(&pool, move || {
                    let _ = started_tx.send(());
                    gate.recv().ok()
                })
                .await
            }
        });
        started.await.unwrap();
        let queued = tokio::spawn({
            let (lane, pool) = (lane.clone(), pool.clone());
            async move { lane.run(&pool, || 2).await }
        });
        while lane.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // The lane is full: refused at once.
        assert!(matches!(lane.run(&pool, || 3).await, Err(HashError::Busy)));
        // The pool's other worker still serves other jobs.
        assert_eq!(pool.run(|| 4).await.unwrap(), 4);
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap().unwrap(), Some(()));
        assert_eq!(queued.await.unwrap().unwrap(), 2);
    }
}
