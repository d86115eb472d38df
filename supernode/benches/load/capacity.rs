//! Part 1: idle clients held by one supernode (the `natter-supernode`
//! binary as a child process), measured from /proc in steps.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_client::supernode::SupernodeSession;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use tokio::process::Command;

use crate::Settings;
use crate::clients::{
    Job, Keys, buddies, client_endpoints, join_all, percentile, reply_matches, search,
};
use crate::common::{ServerProcess, spawn_server};
use crate::procfs::{idle_cpu, mib, proc_stats, udp_rcvbuf_errors, udp_socket_drops};

async fn start_supernode(
    login: SocketAddr,
    login_key: &std::path::Path,
    issuer_key: &std::path::Path,
) -> ServerProcess {
    let binary = env!("CARGO_BIN_EXE_natter-supernode");
    let mut command = Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--login"])
        .arg(login.to_string())
        .arg("--login-key")
        .arg(login_key)
        .arg("--issuer-key")
        .arg(issuer_key)
        .env("RUST_LOG", "warn");
    spawn_server(command, "the supernode").await
}

pub async fn capacity(settings: &Settings, keys: Arc<Keys>) {
    println!("== 1. idle clients held by one supernode (natter-supernode child process)");
    let Some(&max) = settings.steps.last() else {
        println!("no steps");
        return;
    };
    // The login server address: a loopback port held (never read) by the
    // bench, so nothing else answers there.
    let login_sink = UdpSocket::bind("127.0.0.1:0").expect("bind login sink");
    let login = login_sink.local_addr().unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("login-key.pub");
    let pem = keys
        .issuer
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&key_path, pem).unwrap();

    // The login server is unreachable: the supernode certifies itself with
    // the test issuer's key (the single-box mode).
    let issuer_path = format!(
        "{}/../proto/tests/vectors/issuer.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let sn = start_supernode(login, &key_path, std::path::Path::new(&issuer_path)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = proc_stats(&sn.pid);
    let n_endpoints = max.div_ceil(settings.conns_per_endpoint);
    let endpoints = Arc::new(client_endpoints(1, n_endpoints));
    println!(
        "supernode pid {} at {} (login -> {login}, unreachable); {} client endpoints, \
         {} connections each at most; join concurrency {}",
        sn.pid, sn.addr, n_endpoints, settings.conns_per_endpoint, settings.join_concurrency
    );
    println!(
        "baseline: VmRSS {:.1} MiB, RssAnon {:.1} MiB, {} threads, {} fds; client process fds {}",
        mib(base.rss_kib),
        mib(base.anon_kib),
        base.threads,
        base.fds,
        proc_stats("self").fds
    );
    println!(
        "{:>7} {:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>4} {:>9} {:>8}",
        "clients",
        "joined",
        "alive",
        "probe",
        "join s",
        "joins/s",
        "join p50",
        "join p99",
        "RSS MiB",
        "+RSS MiB",
        "KiB/clnt",
        "marg KiB",
        "SN cpu%",
        "bench%",
        "fds",
        "udp drops",
        "SN drops"
    );

    let deadline = Instant::now() + Duration::from_secs(settings.capacity_secs);
    let mut sessions: Vec<SupernodeSession> = Vec::new();
    let mut previous = (0usize, base.rss_kib);
    let mut rng = StdRng::seed_from_u64(1);
    let mut failures = Vec::new();
    let mut last = None;
    for &step in &settings.steps {
        if Instant::now() >= deadline {
            println!("(time bound of {} s reached)", settings.capacity_secs);
            break;
        }
        let have = sessions.len();
        let drops = udp_rcvbuf_errors();
        let sn_drops = udp_socket_drops(sn.addr);
        let jobs: Vec<Job> = (have..step)
            .map(|i| Job {
                name: format!("idle{i:06}"),
                serial: i as u64 + 1,
                addr: sn.addr,
                endpoint: i / settings.conns_per_endpoint,
                buddies: buddies(i, max, settings.buddies, |k| format!("idle{k:06}")),
            })
            .collect();
        let joined = join_all(
            Arc::clone(&keys),
            Arc::clone(&endpoints),
            jobs,
            settings.join_concurrency,
            deadline,
        )
        .await;
        let mut times: Vec<Duration> = joined.sessions.iter().map(|(_, _, t)| *t).collect();
        times.sort_unstable();
        let new = joined.sessions.len();
        sessions.extend(joined.sessions.into_iter().map(|(_, s, _)| s));
        failures.extend(joined.failures);

        // Let the joins settle (finish_join, subscription lookups,
        // allocator), then measure.
        tokio::time::sleep(settings.settle).await;
        let alive = sessions.iter().filter(|s| s.is_alive()).count();
        let mut probed_ok = 0;
        let probes = 10.min(sessions.len());
        for _ in 0..probes {
            let k = rng.gen_range(0..sessions.len());
            let name = format!("idle{k:06}");
            if let Ok(reply) = search(&sessions[0], &name).await
                && reply_matches(&reply, Some(sn.addr))
            {
                probed_ok += 1;
            }
        }
        let stats = proc_stats(&sn.pid);
        let (sn_cpu, bench_cpu) = idle_cpu(&sn.pid, Duration::from_secs(settings.idle_secs)).await;
        let n = sessions.len();
        let grown = stats.rss_kib.saturating_sub(base.rss_kib);
        let per_client = grown as f64 / n.max(1) as f64;
        let marginal = stats.rss_kib as f64 - previous.1 as f64;
        let marginal = marginal / (n - previous.0).max(1) as f64;
        previous = (n, stats.rss_kib);
        last = Some((n, per_client, sn_cpu));
        println!(
            "{:>7} {:>7} {:>6} {:>3}/{:<2} {:>7.2} {:>8.0} {:>6.1}ms {:>6.1}ms {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>7.1} {:>7.1} {:>4} {:>9} {:>8}",
            step,
            n,
            alive,
            probed_ok,
            probes,
            joined.elapsed.as_secs_f64(),
            new as f64 / joined.elapsed.as_secs_f64().max(1e-9),
            percentile(&times, 50.0).as_secs_f64() * 1e3,
            percentile(&times, 99.0).as_secs_f64() * 1e3,
            mib(stats.rss_kib),
            mib(grown),
            per_client,
            marginal,
            sn_cpu,
            bench_cpu,
            stats.fds,
            udp_rcvbuf_errors().saturating_sub(drops),
            udp_socket_drops(sn.addr).saturating_sub(sn_drops)
        );
        if n * 100 < step * 95 {
            println!("(stopped: only {n} of {step} clients joined)");
            break;
        }
    }
    if settings.hold_secs > 0 {
        println!(
            "holding the sessions idle for {} s (supernode pid {})",
            settings.hold_secs, sn.pid
        );
        tokio::time::sleep(Duration::from_secs(settings.hold_secs)).await;
    }
    let end = proc_stats(&sn.pid);
    if let Some((n, per_client, cpu)) = last {
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "targets (issue 15) at {n} clients: {per_client:.1} KiB per client (<= 64 KiB: {}), \
             keep-alive CPU {cpu:.1} % of a core (< 10 %: {})",
            verdict(per_client <= 64.0),
            verdict(cpu < 10.0)
        );
    }
    println!(
        "{} of {} sessions still alive at the end",
        sessions.iter().filter(|s| s.is_alive()).count(),
        sessions.len()
    );
    println!(
        "supernode at the end: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), RssAnon {:.1} MiB, \
         {} threads, {} fds; client process fds {}",
        mib(end.rss_kib),
        mib(end.hwm_kib),
        mib(end.anon_kib),
        end.threads,
        end.fds,
        proc_stats("self").fds
    );
    if !failures.is_empty() {
        println!("{} joins failed, e.g.:", failures.len());
        for f in failures.iter().take(5) {
            println!("  {f}");
        }
    }
    println!(
        "udp drops: datagrams dropped on full socket receive buffers during the step, \
         namespace-wide (SN drops: on the supernode's socket); a lost QUIC Initial costs a \
         ~1 s retransmit, hence the join p99"
    );
    println!(
        "limits: the supernode admits at most Config::max_connections (default 10000) \
         connections; it uses one UDP socket for all of them, so fds do not grow per \
         client. Each idle session costs QUIC keep-alives (1 s interval, 3 s idle timeout)."
    );
    for s in &sessions {
        s.close();
    }
    drop(sessions);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sn.stop().await;
    drop(login_sink);
}
