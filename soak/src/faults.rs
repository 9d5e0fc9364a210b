//! The fault injectors, their schedule, and the scale ramp.
//!
//! Every fault but `scale` gets time slots of `--fault-every` in turn, from [`LEAD`] after the
//! start to [`TAIL`] before the end; when `scale` and `kill` both run, the order is rotated so a
//! kill lands in the slot holding the middle of the run, where the agents peak. `scale` runs the
//! whole time (see [`agents_target`]). Each slot's injector acts, waits for the affected
//! clients to recover, and records its [`Window`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentwire_client::{Bytes, ErrorCode, Membership, Registration};
use anyhow::{anyhow, Result};
use bytes::BytesMut;
use rand::Rng;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::broker::BrokerCtl;
use crate::fleet::{ClientSettings, Fleet, Member};
use crate::load::{err_kind, subscriber};
use crate::proxy::{FaultProxy, Mode};
use crate::raw::{header, Got, Raw};
use crate::track::{
    encode_payload, lock, now_us, FaultKind, Group, Ledger, SubAcc, Window, FAILED, POST_MARGIN_US,
    PRE_MARGIN_US,
};

/// The first slot starts this long after the traffic.
pub const LEAD: Duration = Duration::from_secs(4);
/// No slot ends later than this before the end of the run.
pub const TAIL: Duration = Duration::from_secs(6);
/// Longest wait for the affected clients to recover after a fault.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Partition: delay phase (every chunk delayed by [`PARTITION_DELAY`]).
const PARTITION_DELAY_PHASE: Duration = Duration::from_millis(1500);
/// Partition: added latency per chunk in the delay phase.
const PARTITION_DELAY: Duration = Duration::from_millis(200);
/// Partition: blackhole phase (bytes dropped), ended by a cut.
const PARTITION_BLACKHOLE: Duration = Duration::from_millis(1000);
/// Partition: refuse phase after the cut (new connections closed at once).
const PARTITION_REFUSE: Duration = Duration::from_millis(500);
/// Slow consumer: payload of the bulk messages.
const BULK_SIZE: usize = 16 << 10;
/// Slow consumer: bulk messages per second.
const BULK_RATE: f64 = 2000.0;
/// Slow consumer: longest blast.
const BULK_MAX_TIME: Duration = Duration::from_secs(10);
/// Garbage: connections open at once.
const GARBAGE_CONCURRENCY: usize = 64;
/// Subject of the slow-consumer bulk.
pub const BULK_SUBJECT: &str = "soak.slow.bulk";

/// What the injectors work with.
#[derive(Debug)]
pub struct Ctx {
    /// The accounting.
    pub ledger: Arc<Ledger>,
    /// Every tracked client.
    pub fleet: Arc<Fleet>,
    /// How clients connect.
    pub settings: ClientSettings,
    /// The started broker (`None` with `--server`).
    pub broker: Option<Arc<BrokerCtl>>,
    /// The broker's client address.
    pub addr: SocketAddr,
    /// Its admin API, when known.
    pub admin: Option<String>,
    /// The partition proxy, when the partition fault runs.
    pub part_proxy: Option<Arc<FaultProxy>>,
    /// The storm proxy, when the storm fault runs.
    pub storm_proxy: Option<Arc<FaultProxy>>,
    /// Garbage connections per garbage fault.
    pub garbage_conns: usize,
    /// Most bytes the slow fault publishes before giving up.
    pub slow_max_bytes: u64,
    /// Agents registered now (scale).
    pub agents_now: AtomicUsize,
}

/// The fault of each slot: (offset from the traffic start, kind).
pub fn schedule(
    faults: &[FaultKind],
    duration: Duration,
    every: Duration,
) -> Vec<(Duration, FaultKind)> {
    let mut base: Vec<FaultKind> = faults
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::Scale)
        .collect();
    if base.is_empty() || every.is_zero() {
        return Vec::new();
    }
    let mut starts = Vec::new();
    let mut t = LEAD;
    while t + every + TAIL <= duration && starts.len() < 10_000 {
        starts.push(t);
        t += every;
    }
    if starts.is_empty() && LEAD + TAIL <= duration {
        starts.push(LEAD);
    }
    let n = base.len();
    if faults.contains(&FaultKind::Scale) {
        if let Some(kill) = base.iter().position(|k| *k == FaultKind::Kill) {
            let mid = duration / 2;
            let k = starts
                .iter()
                .position(|s| *s <= mid && mid < *s + every)
                .unwrap_or(starts.len() / 2);
            // Rotate so that slot k gets the kill: base[(k + r) % n] == kill.
            let r = (kill + n - k % n) % n;
            base.rotate_left(r);
        }
    }
    starts
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, base[i % n]))
        .collect()
}

/// Agents wanted at `t` of a run of `d`: `min` for the first 10%, up to `max` by 40%, `max` until
/// 60%, down to `min` by 90%.
pub fn agents_target(t: Duration, d: Duration, min: usize, max: usize) -> usize {
    let f = t.as_secs_f64() / d.as_secs_f64().max(1e-9);
    let lerp = |a: f64, b: f64, x: f64| a + (b - a) * x.clamp(0.0, 1.0);
    let (lo, hi) = (min as f64, max as f64);
    let v = if f < 0.1 {
        lo
    } else if f < 0.4 {
        lerp(lo, hi, (f - 0.1) / 0.3)
    } else if f < 0.6 {
        hi
    } else if f < 0.9 {
        lerp(hi, lo, (f - 0.6) / 0.3)
    } else {
        lo
    };
    v.round() as usize
}

impl Ctx {
    /// Runs one injection and records its window.
    pub async fn inject(self: &Arc<Ctx>, kind: FaultKind) {
        *lock(&self.ledger.current) = kind.name().to_owned();
        let action = now_us();
        let r = match kind {
            FaultKind::Kill | FaultKind::Lameduck => self.restart(kind).await,
            FaultKind::Partition => self.partition().await,
            FaultKind::Storm => self.storm().await,
            FaultKind::Garbage => self.garbage().await,
            FaultKind::Slow => self.slow().await,
            FaultKind::Scale => Ok((Vec::new(), 0, 0, serde_json::Value::Null)),
        };
        let (affects, clients, not_recovered, detail) = match r {
            Ok(v) => v,
            Err(e) => {
                self.ledger
                    .client_error(format!("injector {}: {e:#}", kind.name()));
                (Vec::new(), 0, 0, json!({ "error": format!("{e:#}") }))
            }
        };
        let healed = detail
            .get("healed_us")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(action);
        self.ledger.add_window(Window {
            kind,
            start_us: action.saturating_sub(PRE_MARGIN_US),
            action_us: action,
            healed_us: healed,
            end_us: now_us() + POST_MARGIN_US,
            affects,
            clients,
            not_recovered,
            detail,
        });
        tokio::time::sleep(Duration::from_micros(POST_MARGIN_US)).await;
        lock(&self.ledger.current).clear();
    }

    /// kill -9 or lame duck, restart, wait for every client.
    async fn restart(&self, kind: FaultKind) -> Result<Outcome> {
        let broker = self
            .broker
            .clone()
            .ok_or_else(|| anyhow!("{} needs a broker started by the soak", kind.name()))?;
        let since = now_us();
        let affected = self.fleet.affected(&[], since);
        let t0 = std::time::Instant::now();
        let b = broker.clone();
        let status = tokio::task::spawn_blocking(move || match kind {
            FaultKind::Kill => b.kill_and_restart().map(|()| ("killed".to_owned(), true)),
            _ => b.lameduck_and_restart(),
        })
        .await
        .map_err(|e| anyhow!("restart task: {e}"))??;
        let restart_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let healed = now_us();
        let (nr, flush_failed) = affected.wait_recovered(RECOVERY_TIMEOUT).await;
        Ok((
            Vec::new(),
            affected.len(),
            nr,
            json!({
                "healed_us": healed,
                "down_ms": restart_ms,
                "exit": status.0,
                "exit_ok": status.1,
                "flush_failed": flush_failed,
            }),
        ))
    }

    /// Delay, blackhole, cut + refuse, heal.
    async fn partition(&self) -> Result<Outcome> {
        let p = self
            .part_proxy
            .clone()
            .ok_or_else(|| anyhow!("no partition proxy"))?;
        let affected = self.fleet.affected(&[Group::Partitioned], now_us());
        p.set_mode(Mode::Delay(PARTITION_DELAY));
        tokio::time::sleep(PARTITION_DELAY_PHASE).await;
        p.set_mode(Mode::Blackhole);
        tokio::time::sleep(PARTITION_BLACKHOLE).await;
        p.set_mode(Mode::Refuse);
        p.cut();
        tokio::time::sleep(PARTITION_REFUSE).await;
        p.set_mode(Mode::Pass);
        let healed = now_us();
        let (nr, flush_failed) = affected.wait_recovered(RECOVERY_TIMEOUT).await;
        Ok((
            vec![Group::Partitioned],
            affected.len(),
            nr,
            json!({
                "healed_us": healed,
                "delay_ms": PARTITION_DELAY.as_millis() as u64,
                "delay_phase_ms": PARTITION_DELAY_PHASE.as_millis() as u64,
                "blackhole_ms": PARTITION_BLACKHOLE.as_millis() as u64,
                "refuse_ms": PARTITION_REFUSE.as_millis() as u64,
                "proxy_accepts_total": p.accepted.load(Ordering::Relaxed),
                "flush_failed": flush_failed,
            }),
        ))
    }

    /// Every storm client dropped at once.
    async fn storm(&self) -> Result<Outcome> {
        let p = self
            .storm_proxy
            .clone()
            .ok_or_else(|| anyhow!("no storm proxy"))?;
        let affected = self.fleet.affected(&[Group::Storm], now_us());
        p.cut();
        let healed = now_us();
        let (nr, flush_failed) = affected.wait_recovered(RECOVERY_TIMEOUT).await;
        Ok((
            vec![Group::Storm],
            affected.len(),
            nr,
            json!({
                "healed_us": healed,
                "dropped": affected.len(),
                "flush_failed": flush_failed,
                "proxy_accepts_total": p.accepted.load(Ordering::Relaxed),
            }),
        ))
    }

    /// Garbage connections, [`GARBAGE_CONCURRENCY`] at a time.
    async fn garbage(&self) -> Result<Outcome> {
        let sem = Arc::new(Semaphore::new(GARBAGE_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.garbage_conns {
            let permit = sem.clone().acquire_owned().await?;
            let addr = self.addr;
            set.spawn(async move {
                let r = garbage_one(addr, i % GARBAGE_VARIANTS.len()).await;
                drop(permit);
                (i % GARBAGE_VARIANTS.len(), r)
            });
        }
        let mut outcomes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut errs: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(r) = set.join_next().await {
            let Ok((v, r)) = r else { continue };
            let text = match r {
                Ok((text, codes)) => {
                    for c in codes {
                        *errs.entry(c).or_default() += 1;
                    }
                    text
                }
                Err(e) => format!("error: {e}"),
            };
            *outcomes
                .entry(GARBAGE_VARIANTS[v].to_owned())
                .or_default()
                .entry(text)
                .or_default() += 1;
        }
        Ok((
            vec![Group::Garbage],
            0,
            0,
            json!({
                "healed_us": now_us(),
                "connections": self.garbage_conns,
                "err_codes": errs,
                "outcomes": outcomes,
            }),
        ))
    }

    /// A raw subscriber that stops reading while a bulk publisher feeds it and a bystander.
    async fn slow(self: &Arc<Self>) -> Result<Outcome> {
        let mut raw = Raw::connect(self.addr, Some(4096)).await?;
        raw.subscribe(BULK_SUBJECT).await?;
        let addr = self.addr.to_string();
        let ledger = &self.ledger;
        let by = self
            .fleet
            .connect(
                &self.settings,
                &addr,
                "soak-bystander",
                Group::Direct,
                ledger,
            )
            .await?;
        let bulk = self
            .fleet
            .connect(&self.settings, &addr, "soak-bulk", Group::Direct, ledger)
            .await?;
        let log = ledger.new_pub(Group::Direct, "bulk");
        let sub = by.client.subscribe(BULK_SUBJECT).await?;
        by.client.flush().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let acc = SubAcc::new(ledger.new_sub_id(), Group::Direct, vec![log.id]);
        let task = tokio::spawn(subscriber(sub, acc, stop_rx, ledger.clone()));
        let before = self.slow_consumers().await;
        let t0 = Instant::now();
        let mut cut_after = None;
        let mut bytes = 0u64;
        let mut buf = Vec::with_capacity(BULK_SIZE);
        let mut next_check = t0;
        let period = Duration::from_secs_f64(1.0 / BULK_RATE);
        let mut next_send = t0;
        while t0.elapsed() < BULK_MAX_TIME && bytes < self.slow_max_bytes {
            let seq = log.next_seq();
            let sent = now_us();
            encode_payload(&mut buf, log.id, seq, sent, BULK_SIZE);
            match bulk
                .client
                .publish(BULK_SUBJECT, Bytes::copy_from_slice(&buf))
                .await
            {
                Ok(()) => log.push(sent),
                Err(e) => {
                    log.push(FAILED);
                    ledger.client_error(format!("bulk publish: {}", err_kind(&e)));
                }
            }
            bytes += BULK_SIZE as u64;
            if Instant::now() >= next_check {
                next_check += Duration::from_millis(100);
                if let (Some(b), Some(a)) = (before, self.slow_consumers().await) {
                    if a > b {
                        cut_after = Some(t0.elapsed());
                        break;
                    }
                }
            }
            next_send += period;
            tokio::time::sleep_until(next_send).await;
        }
        let healed = now_us();
        // Everything published is routed, everything routed to the bystander is in its stream.
        let _ = bulk.client.flush().await;
        let _ = by.client.flush().await;
        let _ = stop_tx.send(true);
        let _ = task.await;
        // The raw socket: read what the broker had written before it cut us, up to the close.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut msgs, mut err, mut end) = (0u64, None, "timeout");
        while Instant::now() < deadline && raw.bytes_read < 1 << 30 {
            match raw.next(deadline).await {
                Got::Msg => msgs += 1,
                Got::Err(c) => {
                    err = Some(ErrorCode::from_u16(c).map_or("unknown", ErrorCode::name))
                }
                Got::Closed => {
                    end = "closed";
                    break;
                }
                Got::Timeout => break,
                Got::Malformed => {
                    end = "malformed";
                    break;
                }
                _ => {}
            }
        }
        for m in [&by, &bulk] {
            m.state.retire();
            let _ = m.client.close().await;
        }
        let published = log.published();
        let cut = cut_after.is_some()
            || err == Some("slow_consumer")
            || (end == "closed" && msgs < published);
        if !cut {
            ledger.client_error("slow: the slow consumer was not cut".to_owned());
        }
        Ok((
            vec![Group::Slow],
            0,
            0,
            json!({
                "healed_us": healed,
                "cut": cut,
                "cut_after_ms": cut_after.map(|d| d.as_secs_f64() * 1000.0),
                "bulk_published": published,
                "bulk_bytes": bytes,
                "slow_read_msgs": msgs,
                "slow_err": err,
                "slow_end": end,
            }),
        ))
    }

    /// The broker's slow-consumer count from its `/metrics`, when the admin API is known.
    async fn slow_consumers(&self) -> Option<u64> {
        let admin = self.admin.clone()?;
        tokio::task::spawn_blocking(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            let text = agent
                .get(&format!("http://{admin}/metrics"))
                .call()
                .ok()?
                .into_string()
                .ok()?;
            Some(
                text.lines()
                    .filter(|l| l.starts_with("agentwire_slow_consumers_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64,
            )
        })
        .await
        .ok()
        .flatten()
    }

    /// The scale ramp until `until`: connects and registers agents, or closes the newest, to
    /// follow [`agents_target`]. Returns (peak, registrations, registration failures).
    pub async fn scale(
        self: Arc<Self>,
        min: usize,
        max: usize,
        duration: Duration,
        until: Instant,
    ) -> (usize, u64, u64) {
        let start = Instant::now();
        let mut agents: Vec<(Member, Option<Membership>)> = Vec::new();
        let mut next_id = 0u64;
        let (mut peak, mut registered, mut failed) = (0usize, 0u64, 0u64);
        let addr = self.addr.to_string();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while Instant::now() < until {
            tick.tick().await;
            let target = agents_target(start.elapsed(), duration, min, max);
            if agents.len() < target {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..(target - agents.len()).min(50) {
                    next_id += 1;
                    let (me, addr) = (self.clone(), addr.clone());
                    let id = format!("soak-agent-{next_id}");
                    set.spawn(async move {
                        let m = me
                            .fleet
                            .connect(&me.settings, &addr, &id, Group::Agents, &me.ledger)
                            .await?;
                        let reg = Registration {
                            component: "soak-agent".into(),
                            instance_id: id,
                            capabilities: vec!["soak".into()],
                            ..Registration::default()
                        };
                        let r = m.client.register(reg).await;
                        Ok::<_, anyhow::Error>((m, r))
                    });
                }
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok((m, Ok(membership)))) => {
                            registered += 1;
                            agents.push((m, Some(membership)));
                        }
                        Ok(Ok((m, Err(e)))) => {
                            failed += 1;
                            self.ledger
                                .client_error(format!("register: {}", err_kind(&e)));
                            agents.push((m, None));
                        }
                        Ok(Err(e)) => {
                            failed += 1;
                            self.ledger.client_error(format!("agent connect: {e}"));
                        }
                        Err(e) => self.ledger.client_error(format!("agent task: {e}")),
                    }
                }
            } else if agents.len() > target {
                for (m, _) in agents.drain(target..) {
                    m.state.retire();
                    tokio::spawn(async move {
                        let _ = m.client.close().await;
                    });
                }
            }
            peak = peak.max(agents.len());
            self.agents_now.store(agents.len(), Ordering::Relaxed);
        }
        for (m, _) in agents.drain(..) {
            m.state.retire();
            let _ = m.client.close().await;
        }
        self.agents_now.store(0, Ordering::Relaxed);
        (peak, registered, failed)
    }
}

/// (affected groups, clients affected, clients not recovered, detail).
type Outcome = (Vec<Group>, usize, usize, serde_json::Value);

/// The garbage variants, by index.
const GARBAGE_VARIANTS: [&str; 11] = [
    "random_no_hello",
    "random_after_hello",
    "len_below_header",
    "len_over_limit",
    "pub_lengths_overflow",
    "sub_invalid_subject",
    "unknown_op",
    "truncated_pub_then_close",
    "bad_version",
    "silent_close",
    "server_only_op",
];

/// One garbage connection of variant `v`: returns its outcome text (the ERR names, `+pong`
/// when the connection answered a PING afterwards, and how it ended) and the ERR names.
async fn garbage_one(addr: SocketAddr, v: usize) -> Result<(String, Vec<String>)> {
    let mut raw = Raw::connect(addr, None).await?;
    let random = |n: usize| -> Vec<u8> {
        let mut r = rand::thread_rng();
        let len = r.gen_range(1..=n);
        (0..len).map(|_| r.gen()).collect()
    };
    let mut ping = BytesMut::new();
    agentwire_protocol::encode_ping(&mut ping);
    let v1 = agentwire_protocol::PROTOCOL_VERSION;
    match v {
        0 => {
            let g = raw.next(Instant::now() + Duration::from_secs(2)).await;
            if g != Got::Info {
                return Ok((format!("no INFO: {g:?}"), Vec::new()));
            }
            raw.send(&random(2048)).await?;
        }
        1 => raw.hello(v1, &random(4096)).await?,
        2 => raw.hello(v1, &header(3, 0x10)).await?,
        3 => raw.hello(v1, &header(0x7fff_ffff, 0x10)).await?,
        4 => {
            let mut f = header(20, 0x10);
            f.extend_from_slice(&200u16.to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(b"abcdef");
            raw.hello(v1, &f).await?;
        }
        5 => {
            let mut f = BytesMut::new();
            let subject = b"a..b";
            f.extend_from_slice(&header(14 + subject.len() as u32, 0x11));
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&(subject.len() as u16).to_le_bytes());
            f.extend_from_slice(&0u16.to_le_bytes());
            f.extend_from_slice(subject);
            f.extend_from_slice(&ping);
            raw.hello(v1, &f).await?;
        }
        6 => {
            let mut f = header(6, 0xEE);
            f.extend_from_slice(&ping);
            raw.hello(v1, &f).await?;
        }
        7 => {
            let mut f = BytesMut::new();
            agentwire_protocol::encode_pub(&mut f, b"soak.garbage", b"", b"", &[7u8; 100])?;
            let cut = f.len() / 2;
            raw.hello(v1, &f[..cut]).await?;
            return Ok(("sent_half_then_closed".to_owned(), Vec::new()));
        }
        8 => raw.hello(99, &[]).await?,
        9 => {
            let _ = raw.next(Instant::now() + Duration::from_secs(2)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(("closed_by_us".to_owned(), Vec::new()));
        }
        _ => {
            // MSG is server → client only.
            let mut f = header(6, 0x13);
            f.extend_from_slice(&ping);
            raw.hello(v1, &f).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut codes = Vec::new();
    let mut pong = false;
    let end = loop {
        match raw.next(deadline).await {
            Got::Err(c) => codes.push(
                ErrorCode::from_u16(c)
                    .map_or("unknown", ErrorCode::name)
                    .to_owned(),
            ),
            Got::Pong => {
                // The connection survived the bad frame: done.
                pong = true;
                break "open";
            }
            Got::Closed => break "closed",
            Got::Timeout => break "timeout",
            Got::Malformed => break "malformed_reply",
            _ => {}
        }
    };
    let mut text = codes.join("+");
    if pong {
        text.push_str(if text.is_empty() { "pong" } else { "+pong" });
    }
    if !text.is_empty() {
        text.push(' ');
    }
    text.push_str(end);
    Ok((text, codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_puts_a_kill_in_the_middle_with_scale() {
        let faults =
            FaultKind::parse_list("kill,slow,garbage,storm,partition,scale").expect("valid list");
        let s = schedule(&faults, Duration::from_secs(60), Duration::from_secs(8));
        assert_eq!(s.len(), 6);
        assert_eq!(s[0].0, LEAD);
        let mid = s
            .iter()
            .find(|(t, _)| {
                *t <= Duration::from_secs(30)
                    && Duration::from_secs(30) < *t + Duration::from_secs(8)
            })
            .expect("a slot holds the middle");
        assert_eq!(mid.1, FaultKind::Kill);
        for k in [
            FaultKind::Slow,
            FaultKind::Garbage,
            FaultKind::Storm,
            FaultKind::Partition,
        ] {
            assert!(s.iter().any(|(_, f)| *f == k), "{k:?} scheduled");
        }
        let all = FaultKind::parse_list("all").expect("all");
        let s = schedule(&all, Duration::from_secs(60), Duration::from_secs(8));
        assert_eq!(s.len(), 6, "six slot faults, six slots");
        assert!(schedule(
            &[FaultKind::Scale],
            Duration::from_secs(60),
            Duration::from_secs(8)
        )
        .is_empty());
    }

    #[test]
    fn agents_ramp_up_hold_down() {
        let d = Duration::from_secs(100);
        let at = |s| agents_target(Duration::from_secs(s), d, 100, 1000);
        assert_eq!(at(0), 100);
        assert_eq!(at(25), 550);
        assert_eq!(at(50), 1000);
        assert_eq!(at(75), 550);
        assert_eq!(at(95), 100);
    }
}
