//! What every handler shares.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use hourglass_core::Config;

use crate::auth::{Scope, Verifier};
use crate::error::ApiError;

pub struct AppState {
    pub cfg: Config,
    /// Every read, as `query.read_user` and under the per-query limits.
    pub reader: Client,
    /// `DELETE /v1/users/{user}` only, as `clickhouse.user`.
    pub writer: Client,
    pub verifier: Verifier,
    limiter: DefaultKeyedRateLimiter<u64>,
    /// `/v1/metrics` answers over ranges whose windows have all closed, by
    /// scope and parameters. Closed windows change only by a replay, so an
    /// answer is kept for `CLOSED_ANSWER_TTL`.
    pub closed_answers: moka::future::Cache<String, bytes::Bytes>,
    /// The lake, opened on the first export that reads it.
    pub lake: tokio::sync::OnceCell<Arc<dyn hourglass_lake::store::ObjectStore>>,
    /// One export reads the lake at a time: each reads every file.
    pub lake_scans: tokio::sync::Semaphore,
}

/// How long an answer over closed windows is served from memory (a replay
/// that rewrites them shows within this).
pub const CLOSED_ANSWER_TTL: Duration = Duration::from_secs(300);

/// The client every read goes through: the read-only user when one is
/// configured, and limits the server enforces on each query, so no request
/// can make ClickHouse return, hold or run more than configured.
fn reader_client(cfg: &Config) -> Client {
    let q = &cfg.query;
    let mut login = cfg.clickhouse.clone();
    if !q.read_user.is_empty() {
        login.user = q.read_user.clone();
        login.password = q.read_password.clone();
    }
    hourglass_core::clickhouse::client(&login)
        // The API's own timeout (`bounded`) drops the answer; this stops the
        // query on the server too.
        .with_setting(
            "max_execution_time",
            q.query_timeout_ms.div_ceil(1000).max(1).to_string(),
        )
        .with_setting("max_result_rows", q.max_result_rows.to_string())
        .with_setting("result_overflow_mode", "throw")
        .with_setting("max_memory_usage", q.max_memory_bytes.to_string())
}

impl AppState {
    pub fn new(cfg: Config, verifier: Verifier) -> Self {
        let per_sec = NonZeroU32::new(cfg.query.rate_limit_per_sec.max(1)).expect("max(1)");
        let burst = NonZeroU32::new(cfg.query.rate_limit_burst.max(1)).expect("max(1)");
        let writer = hourglass_core::clickhouse::client(&cfg.clickhouse);
        let reader = reader_client(&cfg);
        Self {
            closed_answers: moka::future::Cache::builder()
                .max_capacity(64 * 1024 * 1024)
                .weigher(|key: &String, answer: &bytes::Bytes| {
                    u32::try_from(key.len() + answer.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(CLOSED_ANSWER_TTL)
                .build(),
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            reader,
            writer,
            verifier,
            lake: tokio::sync::OnceCell::new(),
            lake_scans: tokio::sync::Semaphore::new(1),
            cfg,
        }
    }

    /// 429 with the wait when this token is over its rate.
    pub fn check_rate(&self, scope: &Scope) -> Result<(), ApiError> {
        self.limiter
            .check_key(&scope.token_key)
            .map_err(|not_until| {
                ApiError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
            })
    }

    /// Forget tokens not seen for a while (the limiter keeps one entry per key).
    pub fn forget_idle_tokens(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// `work` (ClickHouse queries), or 504 once `query.query_timeout_ms` has
    /// passed.
    pub async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, ApiError> {
        let limit = Duration::from_millis(self.cfg.query.query_timeout_ms);
        Ok(tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ApiError::Timeout)??)
    }
}
