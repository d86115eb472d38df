//! The terminal UI's I/O: the terminal (crossterm, raw mode, alternate
//! screen, restored on the way out), a thread reading keys, and the
//! network task that stays joined and drives the client library. They
//! talk to the reducer ([`super::state`]) through bounded channels only:
//!
//! ```text
//!  key thread ──Event::Key──┐                          ┌── search, chat (spawned tasks)
//!                           ▼                          │
//!  network task ──Event──► [events: 256] ─► UI loop: state.handle ─► view::render
//!      ▲                                        │
//!      └──────────── [actions: 64] ◄── Action ──┘
//!      └─ call signals, relay grants ─► [signals: 64] ─► the call (a future it polls)
//! ```
//!
//! The network task is the one reader of the supernode's pushes: presence,
//! chat and receipts become events ([`online::handle_push`], as `natter
//! online` does); call signals go to the call, which runs
//! [`call::Incoming::answer`] or [`call::place_call_via`] (as `natter
//! answer` and `natter call` do) with a [`CallControl`] for mute, hold and
//! hang-up. The UI loop and the network task (with the call's media loop
//! inside it) run side by side in the caller's task.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use natter_proto::messages::{CallSignal, PresenceStatus, call_signal, envelope};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use super::state::{Action, Event, Key, Net, State};
use crate::call::{self, Answered, CallControl, CallOptions, CallReport, Incoming, Signals};
use crate::inbox::Keys;
use crate::online::{self, OnlineEvent};
use crate::supernode::SupernodeSession;
use crate::{ClientError, Home, Session, chat, search};

/// Events queued for the UI loop.
pub const EVENT_QUEUE: usize = 256;
/// Actions queued for the network task.
pub const ACTION_QUEUE: usize = 64;
/// Pushes queued for the call task (beyond: dropped and counted).
pub const SIGNAL_QUEUE: usize = 64;
/// How often the screen is redrawn without an event (times, call figures).
pub const TICK: Duration = Duration::from_millis(500);

/// What the UI runs with.
#[derive(Debug)]
pub struct UiConfig {
    pub home: Home,
    pub session: Session,
    pub bootstrap: Vec<SocketAddr>,
    /// Audio of calls (`--audio-in`, `--audio-out`, devices), as for
    /// `natter call` and `natter answer`.
    pub call: CallOptions,
    /// Where each call's report goes as JSON (`--stats-json`).
    pub stats_json: Option<std::path::PathBuf>,
    pub request_timeout: Duration,
}

/// Fails unless standard input and output are a terminal.
pub fn check_terminal() -> Result<(), ClientError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "natter ui needs a terminal (use the other commands in scripts)".to_owned(),
        ));
    }
    Ok(())
}

/// Joins the overlay, then runs the UI on this terminal until the user
/// quits.
pub async fn run(config: UiConfig) -> Result<(), ClientError> {
    check_terminal()?;
    call::check_devices(&config.call)?;
    let overlay = config
        .home
        .join_overlay(&config.session, config.bootstrap.clone())
        .await?;
    let buddies = config.home.buddy_list().names().to_vec();
    let mut state = State::new(config.session.name(), &buddies, crate::now_unix_secs());
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (actions_tx, actions) = mpsc::channel(ACTION_QUEUE);
    // The network task runs beside the UI loop in this task (a call's
    // media loop inside it): nothing needs to move between threads.
    let network = network(
        NetTask {
            overlay,
            home: config.home,
            session: config.session,
            buddies,
            call: config.call,
            stats_json: config.stats_json,
            timeout: config.request_timeout,
            events: events_tx.clone(),
        },
        actions,
    );

    let guard = TerminalGuard::enter()?;
    let stop = Arc::new(AtomicBool::new(false));
    let keys = std::thread::spawn({
        let stop = stop.clone();
        move || read_keys(&events_tx, &stop)
    });
    let ui = async {
        let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
            .map_err(|e| ClientError::Usage(format!("terminal: {e}")))?;
        let mut tick = tokio::time::interval(TICK);
        while !state.quit {
            terminal
                .draw(|f| super::view::render(f, &state))
                .map_err(|e| ClientError::Usage(format!("terminal: {e}")))?;
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
                _ = tick.tick() => Event::Tick(crate::now_unix_secs()),
            };
            for action in state.handle(event) {
                // Never waits on the network task (which may be waiting
                // for room in the event queue): a full queue drops the key.
                match actions_tx.try_send(action) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        state.notice = "busy: that key was dropped, try again".to_owned();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => state.quit = true,
                }
            }
        }
        Ok::<_, ClientError>(())
    };
    let ui = async {
        let result = ui.await;
        // Quit (also after a terminal error): the network task hangs up
        // and leaves.
        let _ = actions_tx.send(Action::Quit).await;
        result
    };
    let (result, ()) = tokio::join!(ui, network);
    stop.store(true, Ordering::Relaxed);
    let _ = keys.join();
    drop(guard);
    result
}

/// Raw mode and the alternate screen, undone on drop (also on an error).
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self, ClientError> {
        let fail = |e: std::io::Error| ClientError::Usage(format!("terminal: {e}"));
        enable_raw_mode().map_err(fail)?;
        let guard = Self;
        execute!(std::io::stdout(), EnterAlternateScreen).map_err(fail)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
        let _ = disable_raw_mode();
    }
}

/// The key thread: crossterm's blocking reads, polled so that it stops.
fn read_keys(events: &mpsc::Sender<Event>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let key = match event::read() {
            Ok(event::Event::Key(k)) if k.kind != KeyEventKind::Release => k,
            Ok(event::Event::Resize(..)) => {
                let _ = events.blocking_send(Event::Tick(crate::now_unix_secs()));
                continue;
            }
            Ok(_) => continue,
            Err(_) => return,
        };
        let key = match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Enter => Key::Enter,
            KeyCode::Esc => Key::Esc,
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            _ => continue,
        };
        if events.blocking_send(Event::Key(key)).is_err() {
            return;
        }
    }
}

/// What the network task owns.
struct NetTask {
    overlay: crate::overlay::Overlay,
    home: Home,
    session: Session,
    buddies: Vec<String>,
    call: CallOptions,
    stats_json: Option<std::path::PathBuf>,
    timeout: Duration,
    events: mpsc::Sender<Event>,
}

/// A call in progress: its task, the way to feed it pushes, its controls.
struct ActiveCall {
    peer: String,
    signals: mpsc::Sender<envelope::Body>,
    control: Arc<CallControl>,
    /// Ringing: where the decision goes.
    decide: Option<oneshot::Sender<bool>>,
    connected: bool,
    /// The call itself (polled by the network task); says how it ended.
    task: Pin<Box<dyn Future<Output = String>>>,
}

impl NetTask {
    async fn tell(&self, net: Net) {
        let _ = self.events.send(Event::Net(net)).await;
    }

    /// Presence, subscriptions, the buddies' presence and the chat stored
    /// while offline, with the current supernode.
    async fn register(&self, sn: &Arc<SupernodeSession>) {
        if let Err(e) = online::register(sn, &self.buddies, self.timeout).await {
            self.tell(Net::Notice(format!("presence: {e}"))).await;
        }
        self.tell(Net::Joined {
            me: self.session.name().to_owned(),
            via: sn.addr().to_string(),
        })
        .await;
        let (sn2, names, events, timeout) = (
            sn.clone(),
            self.buddies.clone(),
            self.events.clone(),
            self.timeout,
        );
        tokio::spawn(async move {
            for name in names {
                lookup(&sn2, &name, &events, timeout).await;
            }
            // Chat stored while offline comes as pushes (read by the
            // network task) before this request's reply.
            let _ = sn2
                .request(envelope::Body::InboxFetch(Default::default()), timeout)
                .await;
        });
    }

    fn spawn_call(
        &self,
        sn: &Arc<SupernodeSession>,
        peer: &str,
        invite: Option<CallSignal>,
    ) -> ActiveCall {
        let (signals_tx, mut signals_rx) = mpsc::channel(SIGNAL_QUEUE);
        let control = Arc::new(CallControl::default());
        let mut options = self.call.clone();
        options.control = Some(control.clone());
        options.live_status = false;
        let (decide_tx, decide_rx) = oneshot::channel();
        let (sn, session, peer_name) = (sn.clone(), self.session.clone(), peer.to_owned());
        let ringing = invite.is_some();
        let stats_json = self.stats_json.clone();
        let task = Box::pin(async move {
            let me = session.name().to_owned();
            let mut signals = Signals::Channel(&mut signals_rx);
            match invite {
                Some(invite) => {
                    let incoming = Incoming {
                        session: &sn,
                        identity: &session.identity,
                        local_name: &me,
                        login_key: &session.login_key,
                        options: &options,
                    };
                    let accept = async { decide_rx.await.unwrap_or(false) };
                    match incoming.answer(&mut signals, &invite, accept).await {
                        Ok(Answered::Talked(report)) => summary(&report, stats_json.as_deref()),
                        Ok(Answered::Declined) => "declined".to_owned(),
                        Ok(Answered::Missed(why)) => format!("missed: {why}"),
                        Err(e) => e.to_string(),
                    }
                }
                None => {
                    match call::place_call_via(
                        &sn,
                        &mut signals,
                        &session.identity,
                        &me,
                        &session.login_key,
                        &peer_name,
                        &options,
                    )
                    .await
                    {
                        Ok(report) => summary(&report, stats_json.as_deref()),
                        Err(e) => e.to_string(),
                    }
                }
            }
        });
        ActiveCall {
            peer: peer.to_owned(),
            signals: signals_tx,
            control,
            decide: ringing.then_some(decide_tx),
            connected: false,
            task,
        }
    }
}

/// How an ended call reads in the notice line; the report is written
/// to `json` too, when given.
fn summary(report: &CallReport, json: Option<&std::path::Path>) -> String {
    if let Some(path) = json
        && let Err(e) =
            natter_fsutil::write_private(path, format!("{}\n", report.to_json()).as_bytes())
    {
        return format!("{}: {e}", path.display());
    }
    format!(
        "{:.1} s, received {} packets, MOS {:.2}",
        report.duration_s, report.media_packets_received, report.mos_estimate
    )
}

/// Searches `name` and reports its presence.
async fn lookup(
    sn: &SupernodeSession,
    name: &str,
    events: &mpsc::Sender<Event>,
    timeout: Duration,
) -> bool {
    let net = match search::search(sn, name, timeout).await {
        Ok(Some(found)) => {
            let online = found.status != PresenceStatus::Offline;
            let net = Net::Presence {
                name: found.name,
                status: found.status,
                last_seen: (!online).then_some(found.last_seen_secs),
            };
            let _ = events.send(Event::Net(net)).await;
            return true;
        }
        Ok(None) => Net::NotFound(name.to_owned()),
        Err(e) => Net::Notice(format!("search {name}: {e}")),
    };
    let _ = events.send(Event::Net(net)).await;
    false
}

async fn network(mut task: NetTask, mut actions: mpsc::Receiver<Action>) {
    // The threads start with what the inbox holds (the newest lines).
    let stored = task.home.inbox().read();
    let lines: Vec<&str> = stored.lines().collect();
    for line in &lines[lines.len().saturating_sub(super::state::THREAD_LIMIT)..] {
        if let Some((sent_at, from, text)) = crate::inbox::parse_line(line) {
            task.tell(Net::Earlier {
                from: from.to_owned(),
                text: text.to_owned(),
                sent_at,
            })
            .await;
        }
    }
    let mut sn = task.overlay.session();
    task.register(&sn).await;
    let mut call: Option<ActiveCall> = None;
    let mut dropped_signals = 0u64;
    let mut live = tokio::time::interval(TICK);
    let inbox = task.home.inbox();
    loop {
        tokio::select! {
            push = sn.next_push() => match push {
                Some(body @ (envelope::Body::CallSignal(_) | envelope::Body::RelayAllocated(_))) => {
                    if let Some(active) = &call {
                        if active.signals.try_send(body).is_err() {
                            dropped_signals += 1;
                            task.tell(Net::Notice(format!("{dropped_signals} call signal(s) dropped: the call task is behind"))).await;
                        }
                    } else if let envelope::Body::CallSignal(signal) = body
                        && matches!(signal.kind, Some(call_signal::Kind::Invite(_)))
                    {
                        let from = signal.from.clone();
                        call = Some(task.spawn_call(&sn, &from, Some(signal)));
                        task.tell(Net::Incoming { from }).await;
                    }
                }
                Some(push) => {
                    let keys = Keys { identity: &task.session.identity, login_key: &task.session.login_key };
                    match online::handle_push(&mut task.overlay, &sn, &inbox, &keys, push, task.timeout).await {
                        Ok(Some(event)) => task.tell(online_event(event)).await,
                        Ok(None) => {}
                        Err(e) => task.tell(Net::Notice(e.to_string())).await,
                    }
                }
                None => {
                    let lost = sn.addr();
                    match task.overlay.rejoin().await {
                        Ok(()) => {
                            sn = task.overlay.session();
                            task.tell(Net::Notice(format!("supernode {lost} lost; rejoined via {}", sn.addr()))).await;
                            task.register(&sn).await;
                        }
                        Err(e) => {
                            task.tell(Net::Notice(format!("supernode {lost} lost; rejoin failed: {e}"))).await;
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
            },
            action = actions.recv() => match action {
                None | Some(Action::Quit) => {
                    if let Some(active) = call.take() {
                        if let Some(decide) = active.decide {
                            let _ = decide.send(false);
                        }
                        active.control.hang_up();
                        let _ = tokio::time::timeout(Duration::from_secs(3), active.task).await;
                    }
                    sn.leave().await;
                    return;
                }
                Some(action) => task.act(action, &sn, &mut call).await,
            },
            outcome = async {
                match call.as_mut() {
                    Some(active) => active.task.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if call.is_some() => {
                let peer = call.take().map(|c| c.peer).unwrap_or_default();
                task.tell(Net::CallEnded { peer, summary: outcome }).await;
            }
            _ = live.tick(), if call.is_some() => {
                if let Some(active) = call.as_mut()
                    && let Some(stats) = active.control.live()
                {
                    if !active.connected {
                        active.connected = true;
                        task.tell(Net::Connected {
                            peer: active.peer.clone(),
                            input: task.call.input_name(),
                            output: task.call.output_name(),
                        }).await;
                    }
                    task.tell(Net::Live {
                        stats,
                        muted: active.control.muted(),
                        held: active.control.held(),
                    }).await;
                }
            }
        }
    }
}

impl NetTask {
    async fn act(&self, action: Action, sn: &Arc<SupernodeSession>, call: &mut Option<ActiveCall>) {
        match action {
            Action::Search(name) => {
                let (sn, events, timeout, home) = (
                    sn.clone(),
                    self.events.clone(),
                    self.timeout,
                    self.home.clone(),
                );
                tokio::spawn(async move {
                    if lookup(&sn, &name, &events, timeout).await {
                        // Found: a buddy from now on (`natter buddies add`),
                        // with its presence pushed.
                        let mut list = home.buddy_list();
                        if list.add(&name).is_ok() && list.save().is_ok() {
                            let _ = online::register(&sn, list.names(), timeout).await;
                        }
                    }
                });
            }
            Action::Chat { to, text } => {
                let (sn, events, timeout, session) = (
                    sn.clone(),
                    self.events.clone(),
                    self.timeout,
                    self.session.clone(),
                );
                tokio::spawn(async move {
                    let sent = async {
                        let message = chat::seal_text(
                            &sn,
                            &session.identity,
                            session.name(),
                            &session.login_key,
                            &to,
                            &text,
                            timeout,
                        )
                        .await?;
                        let (id, sent_at) = (message.message_id.clone(), message.sent_at);
                        chat::submit(&sn, message, timeout).await?;
                        Ok::<_, ClientError>((id, sent_at))
                    };
                    let net = match sent.await {
                        Ok((id, sent_at)) => Net::Sent {
                            to,
                            id,
                            text,
                            sent_at: sent_at / 1000,
                        },
                        Err(e) => Net::Notice(format!("chat to {to}: {e}")),
                    };
                    let _ = events.send(Event::Net(net)).await;
                });
            }
            Action::Call(name) => {
                if call.is_none() {
                    *call = Some(self.spawn_call(sn, &name, None));
                    self.tell(Net::Dialling { to: name }).await;
                }
            }
            Action::Accept | Action::Decline => {
                if let Some(decide) = call.as_mut().and_then(|c| c.decide.take()) {
                    let _ = decide.send(action == Action::Accept);
                }
            }
            Action::Mute(on) => {
                if let Some(c) = call {
                    c.control.set_muted(on);
                }
            }
            Action::Hold(on) => {
                if let Some(c) = call {
                    c.control.set_held(on);
                }
            }
            Action::HangUp => {
                if let Some(c) = call {
                    c.control.hang_up();
                }
            }
            Action::Quit => {}
        }
    }
}

fn online_event(event: OnlineEvent) -> Net {
    match event {
        OnlineEvent::Presence { name, status } => Net::Presence {
            name,
            status,
            last_seen: None,
        },
        OnlineEvent::Message(m) => Net::Message {
            from: m.from,
            text: m.text,
            sent_at: m.sent_at.div_euclid(1000),
        },
        OnlineEvent::Refused(refused) => Net::Notice(refused.warning()),
        OnlineEvent::Delivered { to, message_id } => Net::Delivered { to, id: message_id },
        OnlineEvent::Rejoined { lost, via } => {
            Net::Notice(format!("supernode {lost} lost; rejoined via {via}"))
        }
    }
}
