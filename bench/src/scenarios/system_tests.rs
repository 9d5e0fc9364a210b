//! Every scenario, small, against a real broker started in this process on 127.0.0.1:0
//! (`BrokerTarget::External`, so no process is spawned): the harness must report complete runs
//! with nothing lost and sensible figures.

use std::time::Duration;

use agentwire_broker::{Config, ServerHandle};

use super::conns::ConnsParams;
use super::pubsub::PubSubParams;
use super::rate::RateParams;
use super::reqrep::ReqRepParams;
use super::{run, RunOptions, Spec};
use crate::broker_proc::BrokerTarget;
use crate::report::RunReport;

fn broker() -> ServerHandle {
    let cfg = Config {
        listen: "127.0.0.1:0".parse().expect("literal address"),
        shards: 2,
        shutdown_grace_ms: 1000,
        ..Config::default()
    };
    agentwire_broker::start(cfg).expect("broker starts on 127.0.0.1:0")
}

async fn run_on(h: &ServerHandle, spec: Spec) -> RunReport {
    let target = BrokerTarget::External(h.local_addr().to_string());
    let opts = RunOptions {
        stall_timeout: Duration::from_secs(10),
        run_timeout: Duration::from_secs(60),
        label: "test".into(),
    };
    run(&spec, &target, &opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_fan_out_queue_and_pub_only() {
    let h = broker();
    for (pubs, subs, queue) in [(1, 1, false), (2, 3, false), (3, 2, true), (1, 0, false)] {
        let p = PubSubParams {
            pubs,
            subs,
            queue,
            size: 16,
            msgs: 20_000,
        };
        let r = run_on(&h, Spec::PubSub(p.clone())).await;
        assert!(r.ok, "{p:?}: {}", r.one_line());
        assert_eq!(r.published, 20_000);
        assert_eq!(r.expected, p.expected());
        assert_eq!(r.delivered, p.expected());
        assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0));
        assert!(r.published_per_sec.is_some_and(|v| v > 0.0));
        assert_eq!(r.delivered_per_sec.is_some(), subs > 0);
        // An external broker: no CPU or RSS figures.
        assert!(r.broker_cpu_s.is_none() && r.broker_peak_rss_kib.is_none());
    }
    h.shutdown();
    h.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqrep_with_one_and_several_repliers() {
    let h = broker();
    for (clients, repliers) in [(1, 1), (4, 2)] {
        let p = ReqRepParams {
            clients,
            size: 128,
            requests: 400,
            repliers,
            warmup: 10,
        };
        let r = run_on(&h, Spec::ReqRep(p)).await;
        assert!(r.ok, "{}", r.one_line());
        assert_eq!(r.published, 400);
        let l = r.latency_us.expect("round trips were recorded");
        assert_eq!(l.count, 400);
        assert!(l.p50 > 0.0 && l.p50 <= l.p99 && l.p99 <= l.max);
    }
    h.shutdown();
    h.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_delivers_everything_it_offers() {
    let h = broker();
    let p = RateParams {
        rate: 5_000,
        size: 32,
        duration: 1.0,
        batch_us: 100,
    };
    let r = run_on(&h, Spec::Rate(p)).await;
    assert!(r.ok, "{}", r.one_line());
    assert_eq!(r.published, 5_000);
    assert_eq!(r.delivered, 5_000);
    assert_eq!(r.latency_us.map(|l| l.count), Some(5_000));
    assert!(r.achieved_rate.is_some_and(|a| a > 4_000.0 && a < 6_000.0));
    h.shutdown();
    h.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_all_answer() {
    let h = broker();
    let p = ConnsParams {
        conns: 50,
        duration: 1.0,
    };
    let r = run_on(&h, Spec::Conns(p)).await;
    assert!(r.ok, "{}", r.one_line());
    let c = r.conns.expect("conns figures");
    assert_eq!((c.connected, c.answering, c.pings_failed), (50, 50, 0));
    assert_eq!(c.pings_ok, 50);
    h.shutdown();
    h.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_parameters_fail_the_run_without_connecting() {
    let target = BrokerTarget::External("127.0.0.1:1".into());
    let opts = RunOptions {
        stall_timeout: Duration::from_secs(1),
        run_timeout: Duration::from_secs(5),
        label: String::new(),
    };
    let spec = Spec::PubSub(PubSubParams {
        pubs: 1,
        subs: 1,
        queue: false,
        size: 4,
        msgs: 10,
    });
    let r = run(&spec, &target, &opts).await;
    assert!(!r.ok);
    assert!(r.errors[0].contains("--size"), "{:?}", r.errors);
}
