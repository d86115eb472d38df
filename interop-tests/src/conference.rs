//! A conference in the lab (issue 19): participants behind routers of given
//! NAT types, each on its own router (clients 1..=n), the run's login
//! server and two supernodes ([`scenario::start_servers`]). Every
//! participant sends its own tone (`natter_media::score`'s conference tones,
//! the loopback conference tests' own) and records what it hears; the
//! convener runs `natter call NAME NAME ...`, the others `natter answer
//! --calls 1`, each for its own duration (a shorter one makes that
//! participant leave mid-conference). What comes back is each one's
//! recording and `--stats-json` (`{"conference": {...}, "legs": [...]}`);
//! judging them is the caller's (tests/conference.rs).

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use natter_media::score::{CONFERENCE_TONES_HZ, conference_tone};
use serde_json::Value;

use crate::error::{LabError, Result};
use crate::lab::{self, Client, Lab, LabConfig, ProcId};
use crate::nat::NatType;
use crate::probe;
use crate::scenario::{self, Binaries, PASSWORD, io};

/// One participant of [`run_conference`].
#[derive(Debug, Clone)]
pub struct Participant {
    /// Its router's NAT type.
    pub nat: NatType,
    /// Seconds in the conference (`--duration`; the convener's from its
    /// call, the others' from their answer).
    pub secs: u32,
    /// Declared upstream, kb/s (`--upstream-kbps`).
    pub upstream_kbps: u32,
}

/// A conference to run.
#[derive(Debug, Clone)]
pub struct ConferenceOptions {
    /// Output directory (work files, logs, recordings).
    pub out: PathBuf,
    pub bins: Binaries,
    /// This crate's binary (the lab's probes).
    pub probe_exe: PathBuf,
    /// At most [`CONFERENCE_TONES_HZ`]`.len()`; participant `i` sends tone
    /// `i` and sits behind router `i + 1`.
    pub participants: Vec<Participant>,
    /// Which participant convenes (calls the others).
    pub convener: usize,
}

/// What one participant did, heard and reported.
#[derive(Debug, Clone)]
pub struct Heard {
    /// Its user name (`conf<i>-<nat>`).
    pub name: String,
    pub nat: NatType,
    /// The tone it sent, Hz.
    pub tone_hz: f64,
    /// Its process exited 0.
    pub exit_ok: bool,
    /// Its recording (48 kHz mono; empty if none).
    pub audio: Vec<i16>,
    /// Its `--stats-json` (Null if none).
    pub json: Value,
    /// Its output (the end of it), for failure messages.
    pub log: String,
}

/// The outcome of [`run_conference`].
#[derive(Debug, Clone)]
pub struct ConferenceRun {
    /// The routers' self-check (declared and measured NAT types).
    pub self_check_table: String,
    /// In the order of [`ConferenceOptions::participants`].
    pub heard: Vec<Heard>,
    pub secs: f64,
}

/// A participant's user name: index and NAT type (`conf0-open`).
pub fn participant_name(i: usize, nat: NatType) -> String {
    format!("conf{i}-{nat}")
}

/// Runs one conference: self-checks the routers' NAT types, starts the
/// servers, puts each participant behind its router, registers and logs
/// them in, starts the others' `natter answer` and then the convener's
/// `natter call`, and waits for all of them. Fails if the lab breaks or
/// a router is not of its type; a participant that fails is in its
/// [`Heard`] (`exit_ok`, `log`).
pub fn run_conference(opts: &ConferenceOptions) -> Result<ConferenceRun> {
    let t0 = Instant::now();
    let n = opts.participants.len();
    if !(2..=CONFERENCE_TONES_HZ.len()).contains(&n) || opts.convener >= n {
        return Err(LabError::Other(format!(
            "a conference of {n} participants convened by participant {}",
            opts.convener
        )));
    }
    lab::check_prereqs(&["ss"])?;
    let work = opts.out.join("work");
    io("create output dir", fs::create_dir_all(&work))?;
    let mut cfg = LabConfig::new(&opts.probe_exe);
    cfg.work_dir = work.join("logs");
    let mut lab = Lab::new(cfg)?;
    let mut types: Vec<NatType> = opts.participants.iter().map(|p| p.nat).collect();
    types.sort();
    types.dedup();
    let verdicts = probe::selfcheck_types(&mut lab, &types, Duration::from_secs(1))?;
    let self_check_table = probe::verdict_table(&verdicts);
    probe::require_all_ok(&verdicts)?;
    let servers = scenario::start_servers(&mut lab, &opts.bins, &work, None)?;
    let mut clients = Vec::new();
    let mut result = Ok(Vec::new());
    for (i, p) in opts.participants.iter().enumerate() {
        match lab.add_client(u8::try_from(i + 1).unwrap_or(u8::MAX), p.nat) {
            Ok(c) => clients.push(c),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = conference_body(&mut lab, opts, &servers, &clients);
    }
    let removed: Vec<Result<()>> = clients.iter().map(|c| lab.remove_client(c)).collect();
    let heard = result?;
    removed.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(ConferenceRun {
        self_check_table,
        heard,
        secs: t0.elapsed().as_secs_f64(),
    })
}

fn conference_body(
    lab: &mut Lab,
    opts: &ConferenceOptions,
    servers: &scenario::Servers,
    clients: &[Client],
) -> Result<Vec<Heard>> {
    let dir = opts.out.join("work");
    let key = servers.login_key.display().to_string();
    let env = [("NATTER_PASSWORD", PASSWORD)];
    let client = &opts.bins.client;
    let longest = opts.participants.iter().map(|p| p.secs).max().unwrap_or(0);
    let names: Vec<String> = opts
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| participant_name(i, p.nat))
        .collect();
    let file = |i: usize, what: &str| dir.join(format!("{}-{what}", names[i]));
    let s = |p: PathBuf| p.display().to_string();
    for (i, c) in clients.iter().enumerate() {
        let home = s(file(i, "home"));
        scenario::register_and_login(lab, servers, c, client, &home, &names[i], &dir)?;
        // Each sends its tone all the time it is in (and a little more).
        let tone = conference_tone(CONFERENCE_TONES_HZ[i], 0, (longest as usize + 10) * 48_000);
        natter_media::wav::write_mono_48k(&file(i, "tone.wav"), &tone)
            .map_err(|e| LabError::Other(format!("write tone: {e}")))?;
    }
    let args = |i: usize| -> Vec<String> {
        let p = &opts.participants[i];
        [
            "--duration".to_owned(),
            p.secs.to_string(),
            "--upstream-kbps".into(),
            p.upstream_kbps.to_string(),
            "--audio-in".into(),
            s(file(i, "tone.wav")),
            "--audio-out".into(),
            s(file(i, "heard.wav")),
            "--stats-json".into(),
            s(file(i, "stats.json")),
        ]
        .into()
    };
    // `natter` for participant `i`: its home, the login key, one of the two
    // supernodes, then `words` (the command and its names) and `args(i)`.
    let command_line = |i: usize, words: Vec<String>| -> Vec<String> {
        let mut a = vec![
            "--home".to_owned(),
            s(file(i, "home")),
            "--login-key".into(),
            key.to_string(),
            "--bootstrap".into(),
            servers.sn[i % 2].to_string(),
        ];
        a.extend(words);
        a.extend(args(i));
        a
    };
    // The others answer, each through one of the two supernodes.
    let mut procs: Vec<(usize, ProcId)> = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        if i == opts.convener {
            continue;
        }
        let a = command_line(i, vec!["answer".into(), "--calls".into(), "1".into()]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let id = lab.spawn(
            &c.host_ns,
            &format!("{}-answer", names[i]),
            client,
            &a,
            &env,
        )?;
        procs.push((i, id));
    }
    let ready = Instant::now();
    for &(i, id) in &procs {
        if let Err(e) = lab.wait_for_log(id, "waiting for calls", Duration::from_secs(30)) {
            return Err(LabError::Other(format!(
                "`natter answer` of {} did not get ready: {}",
                names[i],
                scenario::fmt_err(&e)
            )));
        }
    }
    // Their presence spreads between the supernodes (as in a matrix trial).
    thread::sleep(Duration::from_secs(2).saturating_sub(ready.elapsed()));
    let i = opts.convener;
    let others = names
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, n)| n.clone());
    let a = command_line(
        i,
        std::iter::once("call".to_owned()).chain(others).collect(),
    );
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let id = lab.spawn(
        &clients[i].host_ns,
        &format!("{}-call", names[i]),
        client,
        &a,
        &env,
    )?;
    procs.push((i, id));
    procs.sort_by_key(|&(i, _)| i);
    let deadline = Instant::now() + Duration::from_secs(u64::from(longest) + 45);
    let mut heard = Vec::new();
    for (i, id) in procs {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = lab.wait(id, left.max(Duration::from_secs(5)));
        let log = lab.log_of(id);
        let tail: String = {
            let chars: Vec<char> = log.chars().collect();
            chars[chars.len().saturating_sub(3000)..].iter().collect()
        };
        heard.push(Heard {
            name: names[i].clone(),
            nat: opts.participants[i].nat,
            tone_hz: CONFERENCE_TONES_HZ[i],
            exit_ok: matches!(status, Ok(s) if s.success()),
            audio: natter_media::wav::read_mono_48k(&file(i, "heard.wav")).unwrap_or_default(),
            json: fs::read_to_string(file(i, "stats.json"))
                .ok()
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or(Value::Null),
            log: match status {
                Ok(_) => tail,
                Err(e) => format!("{}\n{tail}", scenario::fmt_err(&e)),
            },
        });
    }
    Ok(heard)
}
