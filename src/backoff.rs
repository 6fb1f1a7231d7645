//! Exponential backoff with jitter: the one formula behind every wait before a
//! retry (reconnects, Redis steps, log writes, Docker probes, job retries, jobs
//! Docker could not start).
//!
//! Jitter ("equal jitter": half fixed, half random) keeps many workers that lost
//! Redis at the same moment from coming back in lockstep. The random half comes
//! from the operating system ([`getrandom`]).

use std::future::Future;
use std::time::Duration;

/// The wait after `failures` failed tries: a ceiling of `base` doubled per
/// failure, at most `max`, of which half is fixed and half is `fraction` (in
/// [0, 1)) of the rest. Pure, so the schedule can be tested exactly.
pub fn delay(base: Duration, max: Duration, failures: u32, fraction: f64) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(20));
    let ceiling = base.saturating_mul(factor).min(max);
    let half = ceiling / 2;
    half + half.mul_f64(fraction.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the operating system's generator; 0.5 in the
/// unlikely case that it fails (jitter needs no cryptographic quality).
pub fn random_fraction() -> f64 {
    match getrandom::u64() {
        Ok(r) => (r >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

/// The failures of one retry loop, and the delay before its next try.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let wait = delay(self.base, self.max, self.failures, random_fraction());
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// How many attempts have failed since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait of a loop that runs every `every`: `every` after a pass that
    /// succeeded (the count starts again), else the next delay but never less
    /// than `every`, so that a loop backs off while Redis cannot be reached.
    pub fn pace(&mut self, succeeded: bool, every: Duration) -> Duration {
        if succeeded {
            self.reset();
            every
        } else {
            self.next_delay().max(every)
        }
    }

    /// Runs `step` until it succeeds, fails with an error `retryable` refuses, or
    /// `give_up_after` has passed since the first try (then its last error is
    /// returned), sleeping this backoff's delays in between. `failed` hears of each
    /// failure that will be retried, with the number of failures so far.
    pub async fn retry<T, E, F, Fut>(
        mut self,
        give_up_after: Duration,
        retryable: impl Fn(&E) -> bool,
        mut failed: impl FnMut(&E, u32),
        mut step: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + give_up_after;
        loop {
            match step().await {
                Err(e) if retryable(&e) && tokio::time::Instant::now() < deadline => {
                    failed(&e, self.failures + 1);
                    tokio::time::sleep(self.next_delay()).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_half_is_jitter() {
        let (base, max) = (100 * MS, 2000 * MS);
        assert_eq!(delay(base, max, 0, 0.0), 50 * MS);
        assert_eq!(delay(base, max, 0, 1.0), 100 * MS);
        assert_eq!(delay(base, max, 3, 0.0), 400 * MS);
        assert_eq!(delay(base, max, 3, 0.5), 600 * MS);
        assert_eq!(delay(base, max, 5, 0.0), 1000 * MS);
        assert_eq!(delay(base, max, 40, 1.0), max);
        assert_eq!(
            delay(base, max, u32::MAX, 2.0),
            max,
            "no overflow, fraction clamped"
        );
    }

    #[test]
    fn a_paced_loop_keeps_its_period_and_backs_off_on_failures() {
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        let every = 500 * MS;
        assert_eq!(b.pace(true, every), every);
        assert_eq!(b.pace(false, every), every, "never sooner than the period");
        for _ in 0..10 {
            b.pace(false, every);
        }
        assert!(b.pace(false, every) >= 1000 * MS, "the cap's half at least");
        assert_eq!(b.failures(), 12);
        assert_eq!(b.pace(true, every), every);
        assert_eq!(b.failures(), 0, "a success starts the count again");
    }

    #[test]
    fn the_random_fraction_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= 50 * MS && delays[0] <= 100 * MS);
        assert!(delays[3] >= 400 * MS && delays[3] <= 800 * MS);
        assert!(delays[5..]
            .iter()
            .all(|d| *d >= 1000 * MS && *d <= 2000 * MS));
        assert_eq!(b.failures(), 10);
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    /// With the clock paused, the sleeps between tries are exactly the backoff's:
    /// the loop retries until its deadline has passed, then returns the last error.
    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_its_delays_and_gives_up_after_its_deadline() {
        let start = tokio::time::Instant::now();
        let mut tries = Vec::new();
        let mut heard = 0;
        let result: Result<(), u32> = Backoff::new(100 * MS, 400 * MS)
            .retry(
                Duration::from_secs(2),
                |_| true,
                |_, failures| heard = failures,
                || {
                    tries.push(start.elapsed());
                    let n = tries.len() as u32;
                    async move { Err(n) }
                },
            )
            .await;
        // Delays 50..100, 100..200, 200..400, then 200..400 each: the first try at 0,
        // each later one after its delay, none started after the 2 s deadline.
        assert!(tries.len() >= 6 && tries.len() <= 14, "{tries:?}");
        assert_eq!(tries[0], Duration::ZERO);
        assert!(tries[1] >= 50 * MS && tries[1] <= 100 * MS, "{tries:?}");
        assert!(
            *tries.last().unwrap() >= Duration::from_secs(2),
            "{tries:?}"
        );
        assert!(tries[tries.len() - 2] < Duration::from_secs(2), "{tries:?}");
        assert_eq!(result, Err(tries.len() as u32));
        assert_eq!(heard, tries.len() as u32 - 1);

        let refused: Result<(), &str> = Backoff::new(MS, MS)
            .retry(
                Duration::from_secs(9),
                |_| false,
                |_, _| panic!("not retried"),
                || async { Err("no") },
            )
            .await;
        assert_eq!(refused, Err("no"));
    }
}
