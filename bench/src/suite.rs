//! `suite`: the standard set of cases (the targets table of issue 6), run with interleaved
//! repetitions (rep 1 of every case, then rep 2, ...), summarised as median [min .. max] per
//! figure against its target.
//!
//! Cases are data ([`Case`]: a name, a [`Spec`] and its [`Target`]s), so `ci` reuses the same
//! machinery with its floors, and a cross-system comparison can map the same list onto other
//! brokers. Message counts follow the NATS reference (`../shared/peers/RESULTS.md`); `--scale`
//! divides them, `--quick` makes a short smoke run.
//!
//! A case with [`Case::vs_round_robin`] runs its spec twice per repetition, on a broker started
//! with `--routing round-robin` and on one with `--routing load` (the order alternating between
//! repetitions); the `load` run carries the comparison ([`RoutingComparison`]: p99 round-robin ÷
//! p99 load, req/s load ÷ round-robin, from the same repetition), so its targets can be set on
//! those ratios like on any other figure.

use std::io::Write;

use serde::Serialize;

use crate::broker_proc::{BrokerTarget, Routing};
use crate::report::{fmt_int, fmt_us, RoutingComparison, RunReport};
use crate::scenarios::apistatus::ApiStatusParams;
use crate::scenarios::conns::ConnsParams;
use crate::scenarios::pubsub::PubSubParams;
use crate::scenarios::rate::RateParams;
use crate::scenarios::registry::RegistryParams;
use crate::scenarios::reqrep::ReqRepParams;
use crate::scenarios::{self, RunOptions, Spec};

/// A figure a target is set on, read from a [`RunReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Figure {
    /// Messages published per second.
    PublishedPerSec,
    /// Deliveries per second over all subscribers.
    DeliveredPerSec,
    /// Completed requests per second.
    RequestsPerSec,
    /// Median latency, µs.
    LatencyP50,
    /// 95th percentile latency, µs.
    LatencyP95,
    /// 99th percentile latency, µs.
    LatencyP99,
    /// 99.9th percentile latency, µs.
    LatencyP999,
    /// Broker CPU seconds per million messages in + out.
    BrokerCpuPerMMsgs,
    /// Broker peak resident set over the run, MiB.
    BrokerPeakRssMib,
    /// Broker resident set while holding the connections, MiB (conns).
    BrokerConnsRssMib,
    /// Broker resident set per held connection, KiB (conns).
    BrokerRssPerConnKib,
    /// Offered load the open-loop publisher achieved, messages per second (rate).
    AchievedRate,
    /// Seconds to connect and register every instance (registry).
    RegisterSeconds,
    /// p99 of the paired round-robin run, µs.
    RoundRobinP99,
    /// Requests per second of the paired round-robin run.
    RoundRobinRequestsPerSec,
    /// p99 round-robin ÷ p99 load, same repetition.
    P99RatioVsRoundRobin,
    /// Requests per second load ÷ round-robin, same repetition.
    RequestsPerSecRatioVsRoundRobin,
}

impl Figure {
    /// The figure's value in a run, if the run has it.
    pub fn value(self, r: &RunReport) -> Option<f64> {
        match self {
            Figure::PublishedPerSec => r.published_per_sec,
            Figure::DeliveredPerSec => r.delivered_per_sec,
            Figure::RequestsPerSec => r.requests_per_sec,
            Figure::LatencyP50 => r.latency_us.map(|l| l.p50),
            Figure::LatencyP95 => r.latency_us.map(|l| l.p95),
            Figure::LatencyP99 => r.latency_us.map(|l| l.p99),
            Figure::LatencyP999 => r.latency_us.map(|l| l.p999),
            Figure::BrokerCpuPerMMsgs => r.broker_cpu_s_per_m_msgs,
            Figure::BrokerPeakRssMib => r.broker_peak_rss_kib.map(|k| k as f64 / 1024.0),
            Figure::BrokerConnsRssMib => r
                .conns
                .and_then(|c| c.broker_rss_kib)
                .map(|k| k as f64 / 1024.0),
            Figure::BrokerRssPerConnKib => r.conns.and_then(|c| c.broker_rss_per_conn_kib),
            Figure::AchievedRate => r.achieved_rate,
            Figure::RegisterSeconds => r.registry.map(|g| g.register_s),
            Figure::RoundRobinP99 => r.vs_round_robin.map(|v| v.rr_p99_us),
            Figure::RoundRobinRequestsPerSec => r.vs_round_robin.map(|v| v.rr_requests_per_sec),
            Figure::P99RatioVsRoundRobin => r.vs_round_robin.map(|v| v.p99_ratio),
            Figure::RequestsPerSecRatioVsRoundRobin => {
                r.vs_round_robin.map(|v| v.requests_per_sec_ratio)
            }
        }
    }

    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Figure::PublishedPerSec => "published msg/s",
            Figure::DeliveredPerSec => "delivered msg/s",
            Figure::RequestsPerSec => "requests/s",
            Figure::LatencyP50 => "p50 µs",
            Figure::LatencyP95 => "p95 µs",
            Figure::LatencyP99 => "p99 µs",
            Figure::LatencyP999 => "p99.9 µs",
            Figure::BrokerCpuPerMMsgs => "broker CPU s/M msgs in+out",
            Figure::BrokerPeakRssMib => "broker peak RSS MiB",
            Figure::BrokerConnsRssMib => "broker RSS MiB (all open)",
            Figure::BrokerRssPerConnKib => "broker RSS KiB per conn",
            Figure::AchievedRate => "achieved msg/s",
            Figure::RegisterSeconds => "s to register all",
            Figure::RoundRobinP99 => "round-robin p99 µs",
            Figure::RoundRobinRequestsPerSec => "round-robin requests/s",
            Figure::P99RatioVsRoundRobin => "p99 round-robin ÷ load",
            Figure::RequestsPerSecRatioVsRoundRobin => "req/s load ÷ round-robin",
        }
    }

    /// A value of this figure, formatted.
    pub fn format(self, v: f64) -> String {
        match self {
            Figure::PublishedPerSec
            | Figure::DeliveredPerSec
            | Figure::RequestsPerSec
            | Figure::AchievedRate
            | Figure::RoundRobinRequestsPerSec => fmt_int(v.round() as u64),
            Figure::LatencyP50
            | Figure::LatencyP95
            | Figure::LatencyP99
            | Figure::LatencyP999
            | Figure::RoundRobinP99 => fmt_us(v),
            Figure::P99RatioVsRoundRobin | Figure::RequestsPerSecRatioVsRoundRobin => {
                format!("{v:.2}")
            }
            Figure::RegisterSeconds => format!("{v:.2}"),
            Figure::BrokerCpuPerMMsgs => format!("{v:.3}"),
            Figure::BrokerPeakRssMib | Figure::BrokerConnsRssMib | Figure::BrokerRssPerConnKib => {
                format!("{v:.1}")
            }
        }
    }
}

/// Which side of the bound passes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Bound {
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be at most this.
    AtMost(f64),
    /// The figure must be less than this.
    Below(f64),
}

/// A figure and its bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// What is measured.
    pub figure: Figure,
    /// What passes.
    pub bound: Bound,
}

impl Target {
    /// The figure must be at least `v`.
    pub const fn at_least(figure: Figure, v: f64) -> Target {
        Target {
            figure,
            bound: Bound::AtLeast(v),
        }
    }

    /// The figure must be at most `v`.
    pub const fn at_most(figure: Figure, v: f64) -> Target {
        Target {
            figure,
            bound: Bound::AtMost(v),
        }
    }

    /// The figure must be less than `v`.
    pub const fn below(figure: Figure, v: f64) -> Target {
        Target {
            figure,
            bound: Bound::Below(v),
        }
    }

    /// Whether `v` passes.
    pub fn passes(&self, v: f64) -> bool {
        match self.bound {
            Bound::AtLeast(t) => v >= t,
            Bound::AtMost(t) => v <= t,
            Bound::Below(t) => v < t,
        }
    }

    /// The bound, formatted.
    pub fn describe(&self) -> String {
        match self.bound {
            Bound::AtLeast(t) => format!("≥ {}", self.figure.format(t)),
            Bound::AtMost(t) => format!("≤ {}", self.figure.format(t)),
            Bound::Below(t) => format!("< {}", self.figure.format(t)),
        }
    }
}

/// One case of the suite: a named scenario with its targets. Every case also requires every
/// run to be ok (nothing lost, no error).
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// Short stable name (the JSON `case` field, `--only` matches it).
    pub name: &'static str,
    /// What the row says.
    pub title: String,
    /// The scenario and its parameters.
    pub spec: Spec,
    /// What it must reach.
    pub targets: Vec<Target>,
    /// Run the spec under `--routing round-robin` and under `--routing load` each repetition,
    /// and attach the comparison to the `load` run (needs a started broker, not `--server`).
    pub vs_round_robin: bool,
}

impl Case {
    /// The figures its rows show: the scenario's usual ones, then any other targeted figure.
    pub fn figures(&self) -> Vec<Figure> {
        use Figure::*;
        let mut f = match &self.spec {
            Spec::PubSub(p) if p.subs == 0 => vec![PublishedPerSec, BrokerCpuPerMMsgs],
            Spec::PubSub(_) => vec![DeliveredPerSec, BrokerCpuPerMMsgs, BrokerPeakRssMib],
            Spec::ReqRep(_) if self.vs_round_robin => vec![
                RequestsPerSec,
                LatencyP99,
                RoundRobinRequestsPerSec,
                RoundRobinP99,
            ],
            Spec::ReqRep(_) => vec![RequestsPerSec, LatencyP50, LatencyP99, LatencyP999],
            Spec::Rate(_) => vec![AchievedRate, LatencyP50, LatencyP99, LatencyP999],
            Spec::Conns(_) => vec![BrokerConnsRssMib, BrokerRssPerConnKib, LatencyP99],
            Spec::Registry(_) => vec![RegisterSeconds, LatencyP50, LatencyP99, LatencyP999],
            Spec::ApiStatus(_) => vec![LatencyP50, LatencyP95, LatencyP99, DeliveredPerSec],
        };
        for t in &self.targets {
            if !f.contains(&t.figure) {
                f.push(t.figure);
            }
        }
        f
    }
}

/// How to size the standard cases.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// Repetitions of every case, interleaved.
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Divide every message and request count by this (a quicker, noisier run).
    #[arg(long, default_value_t = 1)]
    pub scale: u64,
    /// Smoke run: --scale 10, conns 1,000 for 5 s, rate for 3 s (unless given).
    #[arg(long)]
    pub quick: bool,
    /// Connections of the conns case [default: 10000].
    #[arg(long)]
    pub conns: Option<u64>,
    /// Seconds the conns case holds its connections [default: 30].
    #[arg(long)]
    pub conns_duration: Option<f64>,
    /// Seconds of offered load in the rate case [default: 10].
    #[arg(long)]
    pub rate_duration: Option<f64>,
    /// Run only the cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// The standard cases: the rows of the targets table in issue 6, then the admin plane's.
pub fn standard_cases(a: &SuiteArgs) -> Vec<Case> {
    let scale = if a.quick && a.scale == 1 {
        10
    } else {
        a.scale.max(1)
    };
    let n = |count: u64| (count / scale).max(1000);
    let conns = a.conns.unwrap_or(if a.quick { 1000 } else { 10_000 });
    let conns_duration = a.conns_duration.unwrap_or(if a.quick { 5.0 } else { 30.0 });
    let rate_duration = a.rate_duration.unwrap_or(if a.quick { 3.0 } else { 10.0 });
    let (registry_instances, registry_changes) = if a.quick { (200, 5) } else { (1000, 20) };
    let pubsub = |pubs, subs, queue, size, msgs| {
        Spec::PubSub(PubSubParams {
            pubs,
            subs,
            queue,
            size,
            msgs: n(msgs),
        })
    };
    let reqrep = |clients, requests| {
        Spec::ReqRep(ReqRepParams {
            clients,
            size: 128,
            requests: n(requests),
            repliers: 1,
            warmup: 2000,
            slow_replier_ms: 0,
        })
    };
    use Figure::*;
    vec![
        Case {
            name: "pubsub-1to1-128",
            title: "pubsub 1→1, 128 B".to_owned(),
            spec: pubsub(1, 1, false, 128, 3_000_000),
            targets: vec![
                Target::at_least(DeliveredPerSec, 3_000_000.0),
                Target::at_most(BrokerCpuPerMMsgs, 0.125),
                Target::at_most(BrokerPeakRssMib, 16.0),
            ],
            vs_round_robin: false,
        },
        Case {
            name: "pubsub-1to1-16",
            title: "pubsub 1→1, 16 B".to_owned(),
            spec: pubsub(1, 1, false, 16, 3_000_000),
            targets: vec![Target::at_least(DeliveredPerSec, 4_000_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "pubsub-pubonly-16",
            title: "pubsub pub-only, 16 B".to_owned(),
            spec: pubsub(1, 0, false, 16, 5_000_000),
            targets: vec![Target::at_least(PublishedPerSec, 8_000_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "pubsub-1to4-128",
            title: "pubsub 1→4 fan-out, 128 B".to_owned(),
            spec: pubsub(1, 4, false, 128, 2_000_000),
            targets: vec![Target::at_least(DeliveredPerSec, 4_500_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "pubsub-4to4-queue-128",
            title: "pubsub 4→4 queue group, 128 B".to_owned(),
            spec: pubsub(4, 4, true, 128, 4_000_000),
            targets: vec![Target::at_least(DeliveredPerSec, 2_600_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "pubsub-1to1-1k",
            title: "pubsub 1→1, 1 KiB".to_owned(),
            spec: pubsub(1, 1, false, 1024, 2_000_000),
            targets: vec![Target::at_least(DeliveredPerSec, 1_300_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "reqrep-c1-128",
            title: "reqrep c=1, 128 B".to_owned(),
            spec: reqrep(1, 50_000),
            targets: vec![
                Target::at_most(LatencyP50, 60.0),
                Target::at_most(LatencyP99, 150.0),
            ],
            vs_round_robin: false,
        },
        Case {
            name: "reqrep-c32-128",
            title: "reqrep c=32, 128 B".to_owned(),
            spec: reqrep(32, 150_000),
            targets: vec![Target::at_least(RequestsPerSec, 100_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "rate-100k-128",
            title: format!("rate 100,000 msg/s, 128 B, {rate_duration} s"),
            spec: Spec::Rate(RateParams {
                rate: 100_000,
                size: 128,
                duration: rate_duration,
                batch_us: 100,
            }),
            targets: vec![
                Target::at_most(LatencyP99, 1_000.0),
                Target::at_most(LatencyP999, 5_000.0),
            ],
            vs_round_robin: false,
        },
        Case {
            name: "conns",
            title: format!("conns {} for {conns_duration} s", fmt_int(conns)),
            spec: Spec::Conns(ConnsParams {
                conns,
                duration: conns_duration,
            }),
            targets: vec![
                Target::at_most(BrokerConnsRssMib, 150.0),
                Target::at_most(LatencyP99, 10_000.0),
            ],
            vs_round_robin: false,
        },
        // The admin plane: load-aware routing, config push, the admin API under load.
        Case {
            name: "reqrep-slow-replier",
            title: "reqrep c=1, 4 repliers, 1 slow (+5 ms), load vs round-robin".to_owned(),
            spec: Spec::ReqRep(ReqRepParams {
                clients: 1,
                size: 128,
                requests: n(10_000),
                repliers: 4,
                warmup: if a.quick { 500 } else { 2000 },
                slow_replier_ms: 5,
            }),
            targets: vec![
                Target::at_least(P99RatioVsRoundRobin, 3.0),
                Target::at_least(RequestsPerSecRatioVsRoundRobin, 0.95),
            ],
            vs_round_robin: true,
        },
        Case {
            name: "registry-1000",
            title: format!(
                "registry {} instances, {registry_changes} config changes",
                fmt_int(registry_instances)
            ),
            spec: Spec::Registry(RegistryParams {
                instances: registry_instances,
                changes: registry_changes,
                change_timeout: 10.0,
            }),
            targets: vec![Target::at_most(LatencyP99, 100_000.0)],
            vs_round_robin: false,
        },
        Case {
            name: "apistatus",
            title: "GET /api/v1/system/status under pubsub 1→1, 128 B".to_owned(),
            spec: Spec::ApiStatus(ApiStatusParams {
                requests: (2000 / scale).max(200),
                load_msgs: 50_000_000,
                load_size: 128,
                interval_us: 1000,
            }),
            targets: vec![
                Target::at_most(LatencyP95, 5_000.0),
                Target::at_least(DeliveredPerSec, 1_000_000.0),
            ],
            vs_round_robin: false,
        },
    ]
}

/// Keeps the cases `only` names (all when it is empty).
pub fn select(cases: Vec<Case>, only: &[String]) -> Vec<Case> {
    if only.is_empty() {
        return cases;
    }
    cases
        .into_iter()
        .filter(|c| only.iter().any(|o| c.name.contains(o.as_str())))
        .collect()
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// One JSON object per run on stdout; the table goes to stderr then.
    pub json: bool,
}

/// One row of the summary: a figure of a case over its repetitions.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case's title.
    pub case: String,
    /// What the row measures.
    pub figure: String,
    /// Median [min .. max], formatted.
    pub measured: String,
    /// The target, formatted.
    pub target: String,
    /// Whether the median meets the target.
    pub pass: bool,
}

/// Runs `cases` `reps` times, interleaved, printing a line per run on stderr (and its JSON on
/// stdout with `--json`), then the summary table. Returns the rows.
pub async fn run_cases(
    cases: &[Case],
    reps: u32,
    target: &BrokerTarget,
    opts: &RunOptions,
    out: Output,
) -> Vec<Row> {
    let mut results: Vec<Vec<RunReport>> = vec![Vec::new(); cases.len()];
    for rep in 1..=reps.max(1) {
        for (i, case) in cases.iter().enumerate() {
            let r = if case.vs_round_robin {
                run_paired(case, rep, reps, target, opts, out).await
            } else {
                let r = run_case(case, rep, reps, target, opts, case.name).await;
                emit(&r, case.name, rep, reps, out);
                r
            };
            if let Some(slot) = results.get_mut(i) {
                slot.push(r);
            }
        }
    }
    let rows = summarize(cases, &results);
    let table = render(&rows);
    if out.json {
        eprintln!("{table}");
    } else {
        println!("{table}");
    }
    rows
}

/// One run of `case` on `target`, labelled `tag`.
async fn run_case(
    case: &Case,
    rep: u32,
    reps: u32,
    target: &BrokerTarget,
    opts: &RunOptions,
    tag: &str,
) -> RunReport {
    let mut o = opts.clone();
    o.label = format!("[{rep}/{reps}] {tag}");
    let mut r = scenarios::run(&case.spec, target, &o).await;
    r.case = Some(case.name.to_owned());
    r.rep = Some(rep);
    r
}

/// Prints a run's line on stderr and, with `--json`, its JSON object on stdout.
fn emit(r: &RunReport, tag: &str, rep: u32, reps: u32, out: Output) {
    eprintln!("[rep {rep}/{reps}] {tag:<24} {}", r.one_line());
    if out.json {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{}", r.to_json());
        let _ = lock.flush();
    }
}

/// Runs `case` under round-robin and under load routing (round-robin first on odd
/// repetitions, load first on even ones) and returns the `load` run with the comparison
/// attached; it fails if either run failed. Both runs are printed.
async fn run_paired(
    case: &Case,
    rep: u32,
    reps: u32,
    target: &BrokerTarget,
    opts: &RunOptions,
    out: Output,
) -> RunReport {
    let (Some(rr_target), Some(load_target)) = (
        target.with_routing(Routing::RoundRobin),
        target.with_routing(Routing::Load),
    ) else {
        let mut r = RunReport::new(case.spec.scenario(), &case.spec);
        r.case = Some(case.name.to_owned());
        r.rep = Some(rep);
        r.error(
            "this case compares routing policies on brokers it starts (--routing): not with \
             --server",
        );
        r.finish();
        emit(&r, case.name, rep, reps, out);
        return r;
    };
    let rr_tag = format!("{}/round-robin", case.name);
    let load_tag = format!("{}/load", case.name);
    let (rr, mut load) = if rep % 2 == 1 {
        let rr = run_case(case, rep, reps, &rr_target, opts, &rr_tag).await;
        emit(&rr, &rr_tag, rep, reps, out);
        let load = run_case(case, rep, reps, &load_target, opts, &load_tag).await;
        (rr, load)
    } else {
        let load = run_case(case, rep, reps, &load_target, opts, &load_tag).await;
        let rr = run_case(case, rep, reps, &rr_target, opts, &rr_tag).await;
        emit(&rr, &rr_tag, rep, reps, out);
        (rr, load)
    };
    load.vs_round_robin = routing_comparison(&load, &rr);
    if !rr.ok {
        load.error(format!(
            "the round-robin run failed: {}",
            rr.errors.join("; ")
        ));
        load.ok = false;
    }
    emit(&load, &load_tag, rep, reps, out);
    load
}

/// The round-robin run against the load run, when both have latency and throughput.
pub fn routing_comparison(load: &RunReport, rr: &RunReport) -> Option<RoutingComparison> {
    let (l, r) = (load.latency_us?, rr.latency_us?);
    let (lr, rrr) = (load.requests_per_sec?, rr.requests_per_sec?);
    if l.p99 <= 0.0 || rrr <= 0.0 {
        return None;
    }
    Some(RoutingComparison {
        rr_p99_us: r.p99,
        rr_requests_per_sec: rrr,
        p99_ratio: r.p99 / l.p99,
        requests_per_sec_ratio: lr / rrr,
    })
}

/// Median, min and max of `v` (`None` when empty). The median of an even count is the mean of
/// the two middle values.
pub fn median_min_max(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    };
    Some((median, s[0], s[s.len() - 1]))
}

/// Builds the summary rows: per case, one row per figure (with its target, if any) and one
/// for "every run ok".
pub fn summarize(cases: &[Case], results: &[Vec<RunReport>]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (case, runs) in cases.iter().zip(results) {
        for figure in case.figures() {
            let target = case.targets.iter().find(|t| t.figure == figure);
            let values: Vec<f64> = runs.iter().filter_map(|r| figure.value(r)).collect();
            let (measured, pass) = match median_min_max(&values) {
                Some((med, lo, hi)) => {
                    let missing = runs.len() - values.len();
                    let mut s = if runs.len() == 1 {
                        figure.format(med)
                    } else {
                        format!(
                            "{} [{} .. {}]",
                            figure.format(med),
                            figure.format(lo),
                            figure.format(hi)
                        )
                    };
                    if missing > 0 {
                        s.push_str(&format!(" ({missing} run(s) without it)"));
                    }
                    (s, target.is_none_or(|t| t.passes(med)) && missing == 0)
                }
                None => ("—".to_owned(), target.is_none()),
            };
            rows.push(Row {
                case: case.title.clone(),
                figure: figure.label().to_owned(),
                measured,
                target: target.map_or_else(String::new, Target::describe),
                pass,
            });
        }
        let ok = runs.iter().filter(|r| r.ok).count();
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        let mut measured = format!("{ok}/{} ok, {} lost", runs.len(), fmt_int(lost));
        if let Some(e) = runs.iter().flat_map(|r| r.errors.first()).next() {
            measured.push_str(&format!(" — {e}"));
        }
        rows.push(Row {
            case: case.title.clone(),
            figure: "runs complete".to_owned(),
            measured,
            target: "all ok, 0 lost".to_owned(),
            pass: ok == runs.len() && !runs.is_empty(),
        });
    }
    rows
}

/// The summary as a Markdown table.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | figure | median [min .. max] | target | result |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let result = if r.target.is_empty() {
            ""
        } else if r.pass {
            "PASS"
        } else {
            "FAIL"
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.case, r.figure, r.measured, r.target, result
        ));
    }
    let targets = rows.iter().filter(|r| !r.target.is_empty()).count();
    let passed = rows
        .iter()
        .filter(|r| !r.target.is_empty() && r.pass)
        .count();
    out.push_str(&format!("\n{passed} of {targets} rows pass"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median_min_max(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(median_min_max(&[]), None);
    }

    #[test]
    fn standard_cases_validate_and_scale() {
        let a = SuiteArgs {
            reps: 3,
            scale: 1,
            quick: false,
            conns: None,
            conns_duration: None,
            rate_duration: None,
            only: vec![],
        };
        let cases = standard_cases(&a);
        assert_eq!(cases.len(), 13);
        for c in &cases {
            c.spec.validate().expect("standard cases are valid");
        }
        let quick = standard_cases(&SuiteArgs { quick: true, ..a });
        match &quick[0].spec {
            Spec::PubSub(p) => assert_eq!(p.msgs, 300_000),
            other => panic!("first case is pubsub, got {other:?}"),
        }
        let only = select(quick, &["reqrep".to_owned()]);
        assert_eq!(only.len(), 3);
        assert!(only[2].vs_round_robin);
    }

    #[test]
    fn a_failed_run_fails_its_rows() {
        let cases = vec![Case {
            name: "x",
            title: "x".to_owned(),
            spec: Spec::Rate(RateParams {
                rate: 10,
                size: 8,
                duration: 1.0,
                batch_us: 100,
            }),
            targets: vec![Target::at_most(Figure::LatencyP99, 1000.0)],
            vs_round_robin: false,
        }];
        let mut r = RunReport::new("rate", serde_json::json!({}));
        r.error("boom");
        r.finish();
        let rows = summarize(&cases, &[vec![r]]);
        assert!(rows
            .iter()
            .filter(|r| !r.target.is_empty())
            .all(|r| !r.pass));
        assert!(render(&rows).contains("0 of 2 rows pass"));
    }
}
