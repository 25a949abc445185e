//! The one loop every background worker of both servers runs (Comms relay, Comms downstream, the App's
//! announcer): list the work waiting, run it **per tenant, tenants concurrently** (at most
//! [`Worker::max_concurrent`] at once), and sleep until woken, until a tenant finishes, or until the idle time
//! is up.
//!
//! Invariant: one tenant's work never runs twice at once, and a tenant's jobs run in the order listed, so the
//! order of a tenant's batches holds; a slow tenant (a large import) delays only itself, never the others.
//! A tenant whose jobs all failed waits with exponential backoff and jitter ([`Backoff`]) before its next try,
//! and the same error is logged once per [`Worker::log_interval`] with a count ([`FailureLog`]); other tenants
//! are not held back by it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use ferry_io::retry::{Backoff, FailureLog};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How a worker paces itself.
#[derive(Debug, Clone)]
pub struct Worker {
    /// What it does, for log lines (`"relay"`).
    pub name: String,
    /// Wait between passes that found nothing to do (a wake-up cuts it short).
    pub idle: Duration,
    /// Retry delays of a failing tenant (or a failing listing): from `backoff_base` growing to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The same error is logged at most once per interval.
    pub log_interval: Duration,
    /// Tenants worked on at once (at least 1).
    pub max_concurrent: usize,
}

/// Default bound on the tenants a worker serves at once (`max_concurrent_tenants` in the server configs).
pub const DEFAULT_MAX_CONCURRENT_TENANTS: usize = 8;

struct Retry {
    backoff: Backoff,
    log: FailureLog,
    not_before: Instant,
}

impl Worker {
    /// Comms' workers: idle 30 s, backoff 0.5 s growing to 60 s, the same error logged once a minute.
    pub fn new(name: impl Into<String>, max_concurrent: usize) -> Self {
        Worker {
            name: name.into(),
            idle: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            log_interval: Duration::from_secs(60),
            max_concurrent,
        }
    }

    /// Run until `shutdown` resolves (work in flight is then dropped; each job must leave its state resumable).
    ///
    /// `list` returns the jobs waiting, as `(tenant, job)` in the order each tenant's jobs must run; `work` turns
    /// a job into the future that does it. Jobs of a tenant that is still busy are left for a later listing.
    pub async fn run<J, L, LF, W, WF>(self, wakeup: &Notify, shutdown: impl Future<Output = ()>, mut list: L, work: W)
    where
        L: FnMut() -> LF,
        LF: Future<Output = anyhow::Result<Vec<(String, J)>>>,
        W: Fn(J) -> WF,
        WF: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        tokio::pin!(shutdown);
        let max = self.max_concurrent.max(1);
        let mut list_backoff = Backoff::new(self.backoff_base, self.backoff_max);
        let mut list_log = FailureLog::new(self.name.clone(), self.log_interval);
        let mut running: JoinSet<(bool, Option<anyhow::Error>)> = JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut retries: HashMap<String, Retry> = HashMap::new();
        loop {
            let mut wait = self.idle;
            match list().await {
                Ok(jobs) => {
                    list_backoff.reset();
                    if let Some(line) = list_log.success() {
                        tracing::info!("{line}");
                    }
                    let now = Instant::now();
                    let in_flight: HashSet<&String> = busy.values().collect();
                    let mut started: Vec<(tokio::task::Id, String)> = Vec::new();
                    for (tenant, jobs) in by_tenant(jobs) {
                        if in_flight.contains(&tenant) {
                            continue;
                        }
                        if let Some(r) = retries.get(&tenant)
                            && r.not_before > now
                        {
                            wait = wait.min(r.not_before - now);
                            continue;
                        }
                        if in_flight.len() + started.len() >= max {
                            break;
                        }
                        let futures: Vec<WF> = jobs.into_iter().map(&work).collect();
                        let handle = running.spawn(async move {
                            let (mut moved, mut failure) = (false, None);
                            for f in futures {
                                match f.await {
                                    Ok(()) => moved = true,
                                    Err(e) => {
                                        moved |= is_partly_done(&e);
                                        failure = Some(e);
                                    }
                                }
                            }
                            (moved, failure)
                        });
                        started.push((handle.id(), tenant));
                    }
                    busy.extend(started);
                }
                Err(e) => {
                    wait = list_backoff.next_delay();
                    if let Some(line) = list_log.failure(&format!("{e:#}"), wait) {
                        tracing::warn!("{line}");
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wakeup.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, outcome) = match done {
                        Ok((id, (moved, failure))) => (id, (moved, failure)),
                        Err(e) => (e.id(), (false, Some(anyhow::anyhow!("the task panicked: {e}")))),
                    };
                    if let Some(tenant) = busy.remove(&id) {
                        self.finished(&mut retries, tenant, outcome);
                    }
                }
            }
        }
    }

    /// Book a tenant's finished run: a failure with nothing moved backs the tenant off; a success resets it.
    fn finished(
        &self,
        retries: &mut HashMap<String, Retry>,
        tenant: String,
        (moved, failure): (bool, Option<anyhow::Error>),
    ) {
        match failure {
            Some(e) if !moved => {
                let r = retries.entry(tenant.clone()).or_insert_with(|| Retry {
                    backoff: Backoff::new(self.backoff_base, self.backoff_max),
                    log: FailureLog::new(format!("{} (tenant {tenant})", self.name), self.log_interval),
                    not_before: Instant::now(),
                });
                let wait = r.backoff.next_delay();
                r.not_before = Instant::now() + wait;
                if let Some(line) = r.log.failure(&format!("{e:#}"), wait) {
                    tracing::warn!("{line}");
                }
            }
            Some(e) => {
                // some of the work moved on: no backoff (the next pass has less to do), but the failure is said
                tracing::warn!("{} (tenant {tenant}): {e:#}", self.name);
                retries.remove(&tenant);
            }
            None => {
                if let Some(mut r) = retries.remove(&tenant)
                    && let Some(line) = r.log.success()
                {
                    tracing::info!("{line}");
                }
            }
        }
    }
}

/// Marks a job's error that came after part of its work was done (a pass that fetched 31 files of 32): the tenant
/// is not backed off, as the next pass has less to do, and the error is logged. Wrap with [`partly_done`].
#[derive(Debug)]
pub struct PartlyDone;

impl std::fmt::Display for PartlyDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("partly done")
    }
}

impl std::error::Error for PartlyDone {}

/// `e`, marked as coming after part of the job's work was done ([`PartlyDone`]).
pub fn partly_done(e: anyhow::Error) -> anyhow::Error {
    e.context(PartlyDone)
}

fn is_partly_done(e: &anyhow::Error) -> bool {
    e.downcast_ref::<PartlyDone>().is_some()
}

/// Jobs grouped by tenant, tenants in the order of their first job, each tenant's jobs in their order.
fn by_tenant<J>(jobs: Vec<(String, J)>) -> Vec<(String, Vec<J>)> {
    let mut out: Vec<(String, Vec<J>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (tenant, job) in jobs {
        match index.get(&tenant) {
            Some(&i) => out[i].1.push(job),
            None => {
                index.insert(tenant.clone(), out.len());
                out.push((tenant, vec![job]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Jobs of a shared queue; a job is `(tenant, n)`, done once its tenant's gate lets it through.
    struct Queue {
        pending: Mutex<Vec<(String, u32)>>,
        done: Mutex<Vec<(String, u32)>>,
        /// Tenants running now, and the most seen at once.
        active: Mutex<(HashSet<String>, usize)>,
        gates: HashMap<String, Arc<tokio::sync::Semaphore>>,
        changed: Notify,
        wakeup: Notify,
    }

    fn queue(jobs: &[(&str, u32)], held: &[&str]) -> Arc<Queue> {
        let gates = jobs
            .iter()
            .map(|(t, _)| {
                let permits = if held.contains(t) { 0 } else { tokio::sync::Semaphore::MAX_PERMITS };
                (t.to_string(), Arc::new(tokio::sync::Semaphore::new(permits)))
            })
            .collect();
        Arc::new(Queue {
            pending: Mutex::new(jobs.iter().map(|(t, n)| (t.to_string(), *n)).collect()),
            done: Mutex::new(Vec::new()),
            active: Mutex::new((HashSet::new(), 0)),
            gates,
            changed: Notify::new(),
            wakeup: Notify::new(),
        })
    }

    fn start(q: &Arc<Queue>, max: usize) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let q = q.clone();
        tokio::spawn(async move {
            let worker = Worker { idle: Duration::from_secs(3600), ..Worker::new("test", max) };
            let list = || {
                let q = q.clone();
                async move {
                    let pending = q.pending.lock().unwrap().clone();
                    anyhow::Ok(pending.into_iter().map(|j| (j.0.clone(), j)).collect::<Vec<_>>())
                }
            };
            let work = |(tenant, n): (String, u32)| {
                let q = q.clone();
                async move {
                    {
                        let mut a = q.active.lock().unwrap();
                        assert!(a.0.insert(tenant.clone()), "tenant {tenant} ran twice at once");
                        a.1 = a.1.max(a.0.len());
                    }
                    let _pass = q.gates[&tenant].acquire().await.unwrap();
                    tokio::task::yield_now().await;
                    q.active.lock().unwrap().0.remove(&tenant);
                    q.pending.lock().unwrap().retain(|j| *j != (tenant.clone(), n));
                    q.done.lock().unwrap().push((tenant, n));
                    q.changed.notify_waiters();
                    anyhow::Ok(())
                }
            };
            worker
                .run(
                    &q.wakeup,
                    async move {
                        let _ = stopped.await;
                    },
                    list,
                    work,
                )
                .await;
        });
        stop
    }

    async fn until(q: &Queue, what: &str, cond: impl Fn(&[(String, u32)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let notified = q.changed.notified();
            if cond(&q.done.lock().unwrap()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", q.done.lock().unwrap());
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    #[tokio::test]
    async fn a_held_tenant_does_not_hold_back_the_others_and_a_tenant_keeps_its_order() {
        // "big" is importing (held) with a second batch queued behind it; "small" arrives meanwhile.
        let q = queue(&[("big", 1), ("big", 2), ("small", 1)], &["big"]);
        let stop = start(&q, 8);
        until(&q, "the small tenant", |d| d.contains(&("small".into(), 1))).await;
        q.pending.lock().unwrap().push(("small".into(), 2));
        q.wakeup.notify_one();
        until(&q, "the small tenant's next batch", |d| d.contains(&("small".into(), 2))).await;
        assert!(q.done.lock().unwrap().iter().all(|(t, _)| t == "small"), "big ran while held");
        q.gates["big"].add_permits(10);
        until(&q, "the big tenant", |d| d.len() == 4).await;
        let big: Vec<u32> = q.done.lock().unwrap().iter().filter(|(t, _)| t == "big").map(|(_, n)| *n).collect();
        assert_eq!(big, [1, 2], "a tenant's jobs run in order");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn at_most_max_concurrent_tenants_run_at_once() {
        let tenants = ["a", "b", "c", "d", "e"];
        let jobs: Vec<(&str, u32)> = tenants.iter().map(|t| (*t, 1)).collect();
        let q = queue(&jobs, &tenants);
        let stop = start(&q, 2);
        // two are started and held; nobody else may start
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.active.lock().unwrap().0.len() < 2 {
            assert!(Instant::now() < deadline, "the worker did not start two tenants");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tenants {
            q.gates[t].add_permits(10);
        }
        until(&q, "every tenant", |d| d.len() == 5).await;
        assert_eq!(q.active.lock().unwrap().1, 2, "more than 2 tenants ran at once");
        let _ = stop.send(());
    }

    /// How often one tenant's job ran within a second of wake-ups, when every run fails with `error`.
    async fn runs_in_a_second_of_failures(error: fn() -> anyhow::Error) -> usize {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let wakeup = Arc::new(Notify::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker =
            Worker { idle: Duration::from_secs(3600), backoff_base: Duration::from_secs(30), ..Worker::new("test", 2) };
        let (r, w) = (runs.clone(), wakeup.clone());
        let task = tokio::spawn(async move {
            let list = || async { anyhow::Ok(vec![("acme".to_string(), ())]) };
            let work = |()| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Err(error())
                }
            };
            worker
                .run(
                    &w,
                    async move {
                        let _ = stopped.await;
                    },
                    list,
                    work,
                )
                .await;
        });
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            wakeup.notify_one();
        }
        let _ = stop.send(());
        task.await.unwrap();
        runs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A failed run with nothing done backs the tenant off (no rerun on a wake-up within the backoff); a run that
    /// did part of its work ([`partly_done`]) is not backed off: the next wake-up runs it again. A pass that
    /// fetched 31 files of 32 must not hold back the news of the 31 (downstream receipts waited a minute).
    #[tokio::test]
    async fn a_partly_done_failure_is_not_backed_off_and_a_plain_one_is() {
        let plain = runs_in_a_second_of_failures(|| anyhow::anyhow!("the App is down")).await;
        assert_eq!(plain, 1, "a failure with nothing done ran again within its 30 s backoff");
        let partly = runs_in_a_second_of_failures(|| partly_done(anyhow::anyhow!("1 of 32 files not fetched"))).await;
        assert!(partly >= 5, "a partly done run was backed off: {partly} runs in a second of wake-ups");
    }
}
