use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use natter_interop_tests::docker::{self as lab_docker, DockerOptions};
use natter_interop_tests::lab::{self, Backend, Lab, LabConfig};
use natter_interop_tests::nat::NatType;
use natter_interop_tests::{
    amplification, background, baseline, capture, detect, ice, probe, scenario, wire,
};
use std::path::PathBuf;

/// Natter's NAT lab: namespaces + nftables NAT routers, a NAT classifier and
/// the call matrix over the real binaries. Needs root.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a router of every NAT type, classify each, print the verdict table.
    Selfcheck {
        /// NAT types to check (default: all, the matrix's six and symmetric-seq).
        #[arg(long, value_delimiter = ',')]
        types: Vec<NatType>,
        /// Lifetime of the routers' NAT state, seconds.
        #[arg(long, default_value_t = 300)]
        map_timeout: u32,
        /// What the lab is built from: network namespaces, or Docker
        /// containers and networks.
        #[arg(long, value_enum, default_value_t = Backend::Netns)]
        backend: Backend,
        /// The docker backend's image for every container.
        #[arg(long, value_name = "IMAGE", default_value = lab_docker::DEFAULT_IMAGE)]
        docker_image: String,
    },
    /// Run the call matrix with the real binaries: writes DIR/results.json,
    /// DIR/matrix.md, DIR/matrix.svg and DIR/progress.md (while running).
    Matrix {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Trials per cell.
        #[arg(long, default_value_t = 1)]
        trials: u32,
        /// Impairment profile of both routers' links, each way: clean; loss2
        /// (2 % random loss); wifi (30 +/- 20 ms, 1 % loss in bursts); 4g
        /// (60 +/- 30 ms, 2 % loss); bad (120 +/- 60 ms, 5 % loss in bursts).
        #[arg(long, default_value = "clean")]
        profile: String,
        /// Cells as CALLER:CALLEE,... (default: all 36).
        #[arg(long)]
        cells: Option<String>,
        /// Where natter-login, natter-supernode and natter are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds of speech per call.
        #[arg(long, default_value_t = 5)]
        call_secs: u32,
        /// Both clients bootstrap from supernode 1 (default: A from 1, B from 2).
        #[arg(long)]
        same_supernode: bool,
        /// Lifetime of the routers' NAT state, seconds.
        #[arg(long, default_value_t = 300)]
        map_timeout: u32,
        /// After S seconds of each call, router A drops all UDP to/from B
        /// (the direct path dies; expected final path: relayed at best).
        #[arg(long, value_name = "S")]
        break_direct_after: Option<u32>,
        /// After S seconds of each call, router A drops all UDP and lets out
        /// only TCP to 80/443 (expected final path: tcp-relay). Use calls
        /// long enough to recover (e.g. --call-secs 12 --block-udp-after 4).
        #[arg(long, value_name = "S")]
        block_udp_after: Option<u32>,
        /// After S seconds of each call, router A lifts --block-udp-after's
        /// rules: the call should come back from the TCP relay to UDP (e.g.
        /// --call-secs 20 --block-udp-after 4 --unblock-udp-after 10).
        #[arg(long, value_name = "S", requires = "block_udp_after")]
        unblock_udp_after: Option<u32>,
        /// After S seconds of each call, supernode 1 (A's; B's too with
        /// --same-supernode) is killed with SIGKILL for the rest of the run:
        /// the call must move to another relay (one cell, one trial).
        #[arg(long, value_name = "S")]
        kill_supernode_after: Option<u32>,
        /// A promoted relay in every trial: a third client behind a router
        /// of this NAT type (open) stays online with `--promote-after 2` and
        /// is promoted to a supernode (the login server auto-approves it);
        /// A and B join through it only, so it relays their calls.
        #[arg(long, value_name = "NAT")]
        promoted_relay: Option<NatType>,
        /// After S seconds of each call, the promoted client's `natter
        /// online` gets SIGTERM (it steps down): the call must move to an
        /// operator supernode's relay. Needs --promoted-relay.
        #[arg(long, value_name = "S", requires = "promoted_relay")]
        stop_promoted_after: Option<u32>,
        /// Also run a baseline over the same cells: `ice` = two standard
        /// ICE agents (webrtc-ice; STUN from supernode 1, TURN from coturn's
        /// `turnserver`), one table next to Natter's figures.
        #[arg(long, value_enum)]
        baseline: Option<BaselineKind>,
        /// Version interop: the caller's `natter` from the build in DIR (e.g.
        /// the previous release's target/release); the servers stay --bin-dir's.
        #[arg(long, value_name = "DIR")]
        bin_dir_a: Option<PathBuf>,
        /// Likewise the callee's `natter`.
        #[arg(long, value_name = "DIR")]
        bin_dir_b: Option<PathBuf>,
        /// What the lab is built from: network namespaces (the default), or
        /// Docker containers and networks (same topology, same recipes,
        /// same results.json; images from deploy/build-images).
        #[arg(long, value_enum, default_value_t = Backend::Netns)]
        backend: Backend,
        /// The docker backend's image for every container (it needs
        /// nftables and iproute2; the binaries are mounted from --bin-dir).
        #[arg(long, value_name = "IMAGE", default_value = lab_docker::DEFAULT_IMAGE)]
        docker_image: String,
        /// Version interop on the docker backend: the caller's host runs
        /// IMAGE and its `natter` (/usr/local/bin/natter, e.g. `natter:0.1.0`
        /// of another build); the servers stay --bin-dir's.
        #[arg(long, value_name = "IMAGE", conflicts_with = "bin_dir_a")]
        image_a: Option<String>,
        /// Likewise the callee's.
        #[arg(long, value_name = "IMAGE", conflicts_with = "bin_dir_b")]
        image_b: Option<String>,
    },
    /// Amplification per unauthenticated service: run natter-login and a
    /// natter-supernode on loopback, probe each service from sockets that
    /// never complete anything, print bytes in, bytes out and their ratio
    /// (no root needed). Fails when a ratio is over its target.
    Amplification {
        /// Where natter-login and natter-supernode are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Milliseconds each probe listens for answers (retransmissions included).
        #[arg(long, default_value_t = 4000)]
        window_ms: u64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Labelled scenario captures (issue 17): per scenario, a pcap of both
    /// sides of each client's router, the clients' key log (NATTER_KEYLOG),
    /// labels.json (every packet's meaning, from ground truth) and the
    /// active prober's answers. Needs root.
    Capture {
        /// The scenario (direct-call, overlay, hole-punched, relayed,
        /// tcp-fallback, silence, supernode-lost, port-prediction, hold).
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        scenario: Option<capture::Scenario>,
        /// Every scenario, each into OUT/NAME/, with OUT/index.json.
        #[arg(long)]
        all: bool,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Where natter-login, natter-supernode and natter are (default: next to this binary).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// No background (non-Natter) traffic.
        #[arg(long)]
        no_background: bool,
        /// No active probing at the end.
        #[arg(long)]
        no_active_probe: bool,
    },
    /// Run the detectors (chi-square after Bonfiglio et al. 2007, active
    /// probing) on captures made by `capture` (a scenario directory, or the
    /// directory of `capture --all`); prints the table, writes
    /// DIR/detect.json and DIR/detect.md.
    Detect {
        /// The capture directory.
        dir: PathBuf,
    },
    /// Draw an existing results.json (of `matrix`) as the coloured SVG grid
    /// and the Markdown tables, without running anything (no root needed).
    Render {
        /// The matrix's results.json.
        results: PathBuf,
        /// Where to write the SVG (default: RESULTS with the extension .svg).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Also write the Markdown tables here.
        #[arg(long, value_name = "FILE")]
        markdown: Option<PathBuf>,
    },
    /// Remove namespaces left behind by crashed lab runs.
    Cleanup,
    /// (internal) one webrtc-ice agent of the ICE baseline: gathers, trickles
    /// through the rendezvous files in DIR, connects, writes its JSON report.
    #[command(hide = true)]
    IceAgent {
        #[arg(long)]
        role: ice::Role,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        stun: Option<String>,
        #[arg(long, requires_all = ["turn_user", "turn_password"])]
        turn: Option<String>,
        #[arg(long)]
        turn_user: Option<String>,
        #[arg(long)]
        turn_password: Option<String>,
        #[arg(long, default_value_t = 15_000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 1500)]
        linger_ms: u64,
        #[arg(long)]
        report: PathBuf,
    },
    /// (internal) background traffic: `serve` (DNS responder, sinks) or
    /// `send` (RTP-like, UDP stream, DNS queries).
    #[command(hide = true)]
    BgTraffic {
        #[arg(value_parser = ["serve", "send"])]
        mode: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long, default_value_t = 4)]
        secs: u64,
    },
    /// (internal) the active prober: probe every target, write JSON.
    #[command(hide = true)]
    ActiveProbe {
        #[arg(long)]
        targets: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// (internal) run a probe reflector.
    #[command(hide = true)]
    ProbeReflector {
        #[arg(long, value_delimiter = ',')]
        ips: Vec<Ipv4Addr>,
        #[arg(long, value_delimiter = ',', default_value = "3478,3479")]
        ports: Vec<u16>,
        #[arg(long, value_delimiter = ',', default_value = "80,443,8080")]
        tcp: Vec<u16>,
        #[arg(long)]
        relay: Option<SocketAddrV4>,
        #[arg(long, value_delimiter = ',')]
        trust: Vec<Ipv4Addr>,
        #[arg(long, default_value_t = 3600)]
        max_secs: u64,
    },
    /// (internal) the userspace impairment link between two interfaces.
    #[command(hide = true)]
    ProbeWire {
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: String,
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
        #[arg(long, default_value_t = 0)]
        jitter_us: u64,
        /// Loss probability (0..=1).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Mean loss-burst length in packets (>= 1).
        #[arg(long, default_value_t = 1.0)]
        burst: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = natter_interop_tests::impair::DEFAULT_CAPACITY)]
        capacity: usize,
    },
    /// (internal) send paced, timestamped UDP datagrams.
    #[command(hide = true)]
    ProbeUdpSend {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 1000)]
        interval_us: u64,
    },
    /// (internal) receive them; prints a JSON report of one-way delays.
    #[command(hide = true)]
    ProbeUdpSink {
        #[arg(long)]
        bind: SocketAddrV4,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        idle_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        max_ms: u64,
    },
    /// (internal) classify the NAT in front of this host; prints JSON.
    #[command(hide = true)]
    ProbeClient {
        #[arg(long, default_value_t = lab::S1)]
        s1: Ipv4Addr,
        #[arg(long, default_value_t = lab::S1B)]
        s1b: Ipv4Addr,
        #[arg(long, default_value_t = lab::S2)]
        s2: Ipv4Addr,
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
}

/// A baseline to run next to Natter's matrix.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BaselineKind {
    /// Two webrtc-ice agents per cell.
    Ice,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Selfcheck {
            types,
            map_timeout,
            backend,
            docker_image,
        } => {
            let types = if types.is_empty() {
                NatType::ALL.into_iter().chain(NatType::EXTRA).collect()
            } else {
                types
            };
            let exe = std::env::current_exe().context("current exe")?;
            let mut cfg = LabConfig::new(exe);
            cfg.map_timeout_s = map_timeout;
            cfg.backend = backend;
            cfg.docker.image = docker_image;
            let mut lab = Lab::new(cfg)?;
            let verdicts = probe::selfcheck_types(&mut lab, &types, Duration::from_secs(1))?;
            print!("{}", probe::verdict_table(&verdicts));
            probe::require_all_ok(&verdicts)?;
            println!(
                "self-check: all {} routers behave as declared",
                verdicts.len()
            );
        }
        Cmd::Matrix {
            out,
            trials,
            profile,
            cells,
            bin_dir,
            call_secs,
            same_supernode,
            map_timeout,
            break_direct_after,
            block_udp_after,
            unblock_udp_after,
            kill_supernode_after,
            promoted_relay,
            stop_promoted_after,
            baseline,
            bin_dir_a,
            bin_dir_b,
            backend,
            docker_image,
            image_a,
            image_b,
        } => {
            let exe = std::env::current_exe().context("current exe")?;
            // processes in containers see the host's paths, not its cwd
            let out = std::path::absolute(&out).context("output directory")?;
            if (image_a.is_some() || image_b.is_some()) && backend != Backend::Docker {
                bail!("--image-a and --image-b need --backend docker");
            }
            if backend == Backend::Docker && baseline.is_some() {
                bail!("--baseline runs on the namespace backend only");
            }
            let mut docker = DockerOptions {
                image: docker_image,
                ..DockerOptions::default()
            };
            let mut image_client = |index: u8, image: Option<String>| {
                image.map(|i| {
                    docker.host_images.insert(index, i);
                    PathBuf::from(lab_docker::IMAGE_CLIENT)
                })
            };
            let image_a = image_client(1, image_a);
            let image_b = image_client(2, image_b);
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => exe.parent().context("exe dir")?.to_path_buf(),
            };
            let cells = match cells {
                Some(c) => scenario::parse_cells(&c).map_err(anyhow::Error::msg)?,
                None => scenario::all_cells(),
            };
            let opts = scenario::MatrixOptions {
                trials,
                profile,
                call_secs,
                same_supernode,
                map_timeout_s: map_timeout,
                break_direct_after_s: break_direct_after,
                block_udp_after_s: block_udp_after,
                unblock_udp_after_s: unblock_udp_after,
                kill_supernode_after_s: kill_supernode_after,
                promoted_relay,
                stop_promoted_after_s: stop_promoted_after,
                client_a: match image_a {
                    Some(p) => Some(p),
                    None => bin_dir_a
                        .as_deref()
                        .map(scenario::Binaries::client_in)
                        .transpose()?,
                },
                client_b: match image_b {
                    Some(p) => Some(p),
                    None => bin_dir_b
                        .as_deref()
                        .map(scenario::Binaries::client_in)
                        .transpose()?,
                },
                backend,
                docker,
                ..scenario::MatrixOptions::new(
                    out,
                    cells,
                    scenario::Binaries::in_dir(&bin_dir)?,
                    exe,
                )
            };
            let report = match baseline {
                None => scenario::run_matrix(&opts)?,
                Some(BaselineKind::Ice) => {
                    let r = baseline::run(&opts, &baseline::IceOptions::default())?;
                    let ice_conn: u32 = r.ice_baseline.iter().map(|c| c.connected).sum();
                    let ice_pass: u32 = r.ice_baseline.iter().map(|c| c.passed).sum();
                    let ice_trials: u32 = r.ice_baseline.iter().map(|c| c.trials).sum();
                    println!(
                        "ICE baseline: {ice_conn}/{ice_trials} sessions connected, {ice_pass}/{ice_trials} as expected"
                    );
                    r.natter
                }
            };
            let passed: u32 = report.cells.iter().map(|c| c.passed()).sum();
            let connected: u32 = report.cells.iter().map(|c| c.connected).sum();
            let trials: u32 = report.cells.iter().map(|c| c.trials).sum();
            let incompatible: u32 = report.cells.iter().map(|c| c.incompatible()).sum();
            if incompatible > 0 {
                println!(
                    "{incompatible}/{trials} trials INCOMPATIBLE: a side refused the other's protocol version"
                );
            }
            if let Some(summary) = scenario::udp_blocked_summary(&report) {
                println!("udp-blocked rows and columns: {summary}");
            }
            println!(
                "{connected}/{trials} trials connected, {passed}/{trials} over the expected path; see {}",
                opts.out.join("matrix.md").display()
            );
        }
        Cmd::Render {
            results,
            svg,
            markdown,
        } => {
            let text = std::fs::read_to_string(&results)
                .with_context(|| format!("read {}", results.display()))?;
            let report: scenario::MatrixReport = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a matrix results.json", results.display()))?;
            let svg = svg.unwrap_or_else(|| results.with_extension("svg"));
            std::fs::write(&svg, scenario::matrix_svg(&report))
                .with_context(|| format!("write {}", svg.display()))?;
            println!("wrote {}", svg.display());
            if let Some(md) = markdown {
                // a run with the baseline: its side-by-side table first
                let text = match serde_json::from_str::<baseline::BaselineReport>(&text) {
                    Ok(mut both) => {
                        baseline::compare_all(&mut both);
                        baseline::full_markdown(&both)
                    }
                    Err(_) => scenario::matrix_markdown(&report),
                };
                std::fs::write(&md, text).with_context(|| format!("write {}", md.display()))?;
                println!("wrote {}", md.display());
            }
        }
        Cmd::Amplification {
            bin_dir,
            window_ms,
            json,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()
                    .context("current exe")?
                    .parent()
                    .context("exe dir")?
                    .to_path_buf(),
            };
            let report = amplification::run(&amplification::Options {
                bin_dir,
                window: Duration::from_millis(window_ms),
            })?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            let over: Vec<_> = report
                .rows
                .iter()
                .filter(|r| !r.within_target())
                .map(|r| r.service.as_str())
                .collect();
            if !over.is_empty() {
                bail!("over target: {}", over.join(", "));
            }
        }
        Cmd::Capture {
            scenario,
            all,
            out,
            bin_dir,
            no_background,
            no_active_probe,
        } => {
            let exe = std::env::current_exe().context("current exe")?;
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => exe.parent().context("exe dir")?.to_path_buf(),
            };
            let opts = capture::CaptureOptions {
                bins: scenario::Binaries::in_dir(&bin_dir)?,
                exe,
                background: !no_background,
                active_probe: !no_active_probe,
            };
            if all {
                let index = capture::run_all(&opts, &capture::Scenario::ALL, &out)?;
                let bad: Vec<&str> = index
                    .scenarios
                    .iter()
                    .filter(|s| !s.ok)
                    .map(|s| s.scenario.as_str())
                    .collect();
                println!(
                    "{} scenarios in {} (index.json); not ok: {:?}",
                    index.scenarios.len(),
                    out.display(),
                    bad
                );
            } else if let Some(s) = scenario {
                let sum = capture::run_scenario(&opts, s, &out)?;
                println!("{}", serde_json::to_string_pretty(&sum)?);
                if !sum.ok {
                    bail!(
                        "scenario {s} did not do what it should: {}",
                        sum.problems.join("; ")
                    );
                }
            }
        }
        Cmd::Detect { dir } => {
            let dirs: Vec<PathBuf> = if dir.join("labels.json").is_file() {
                vec![dir.clone()]
            } else {
                let text = std::fs::read_to_string(dir.join("index.json")).with_context(|| {
                    format!("{} has neither labels.json nor index.json", dir.display())
                })?;
                let index: capture::Index = serde_json::from_str(&text)?;
                index
                    .scenarios
                    .iter()
                    .map(|s| dir.join(&s.scenario))
                    .collect()
            };
            let mut evals = Vec::new();
            for d in &dirs {
                evals.push(detect::evaluate(d)?);
            }
            let md = detect::markdown(&evals);
            print!("{md}");
            std::fs::write(dir.join("detect.md"), &md)?;
            std::fs::write(
                dir.join("detect.json"),
                serde_json::to_string_pretty(&evals)?,
            )?;
        }
        Cmd::IceAgent {
            role,
            dir,
            stun,
            turn,
            turn_user,
            turn_password,
            timeout_ms,
            linger_ms,
            report,
        } => {
            let args = ice::AgentArgs {
                role,
                dir,
                stun,
                turn: turn.map(|url| ice::TurnServer {
                    url,
                    user: turn_user.unwrap_or_default(),
                    password: turn_password.unwrap_or_default(),
                }),
                timeout: Duration::from_millis(timeout_ms),
                linger: Duration::from_millis(linger_ms),
            };
            let rep = ice::run_agent(&args)?;
            let json = serde_json::to_string_pretty(&rep)?;
            std::fs::write(&report, &json)
                .with_context(|| format!("write {}", report.display()))?;
            println!("{json}");
        }
        Cmd::BgTraffic { mode, ip, secs } => match mode.as_str() {
            "serve" => background::serve(ip, secs)?,
            _ => background::send(ip, secs)?,
        },
        Cmd::ActiveProbe { targets, out } => detect::active_probe_main(&targets, &out)?,
        Cmd::Cleanup => {
            lab::check_prereqs(&[])?;
            let gone = lab::cleanup_stale()?;
            println!("removed {} stale namespaces: {gone:?}", gone.len());
            if lab_docker::engine_available() {
                let gone = lab_docker::cleanup_stale()?;
                println!(
                    "removed {} stale docker containers, networks and rules: {gone:?}",
                    gone.len()
                );
            }
        }
        Cmd::ProbeReflector {
            ips,
            ports,
            tcp,
            relay,
            trust,
            max_secs,
        } => {
            if ips.is_empty() || ports.is_empty() {
                bail!("--ips and --ports must not be empty");
            }
            probe::run_reflector(probe::ReflectorArgs {
                ips,
                ports,
                tcp,
                relay,
                trust,
                max_secs,
            })?;
        }
        Cmd::ProbeWire {
            a,
            b,
            delay_us,
            jitter_us,
            loss,
            burst,
            seed,
            capacity,
        } => {
            let params = natter_interop_tests::impair::LinkParams {
                delay_us,
                jitter_us,
                loss,
                burst,
            };
            if let Err(e) = params.validate() {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
            wire::run_wire(&wire::WireArgs {
                a,
                b,
                params,
                seed,
                capacity,
            })?;
        }
        Cmd::ProbeUdpSend {
            to,
            count,
            interval_us,
        } => {
            let n = wire::udp_send(to, count, Duration::from_micros(interval_us))?;
            println!("sent {n}");
        }
        Cmd::ProbeUdpSink {
            bind,
            count,
            idle_ms,
            max_ms,
        } => {
            let rep = wire::udp_sink(
                bind,
                count,
                Duration::from_millis(idle_ms),
                Duration::from_millis(max_ms),
            )?;
            println!("{}", serde_json::to_string(&rep)?);
        }
        Cmd::ProbeClient {
            s1,
            s1b,
            s2,
            wait_ms,
        } => {
            let args = probe::ClientArgs {
                s1,
                s1b,
                s2,
                wait: Duration::from_millis(wait_ms),
                ..probe::ClientArgs::default()
            };
            let report = probe::classify(&args)?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
