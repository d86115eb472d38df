//! The terminal UI's state and reducer: pure (no terminal, no sockets, no
//! clock): [`State::handle`] takes one [`Event`] (a key, something the
//! network task reports, a clock tick) and returns the [`Action`]s the I/O
//! loop carries out with the client library. The state is the view model
//! that [`super::view`] draws.
//!
//! Every action has a CLI equivalent ([`KEYS`], shown in the help).

use std::collections::BTreeMap;

use natter_proto::messages::PresenceStatus;

use crate::call::LiveStats;
use crate::search::presence_name;

/// Messages kept per thread (older ones scroll away).
pub const THREAD_LIMIT: usize = 500;
/// Characters a typed line may hold.
pub const INPUT_LIMIT: usize = 1000;

/// The keys, what they do, and the command that does the same.
pub const KEYS: &[(&str, &str, &str)] = &[
    ("Up/Down", "choose a contact", "natter buddies list"),
    ("Enter", "write to the contact", "natter chat NAME TEXT"),
    (
        "/",
        "search a user (found: added)",
        "natter search NAME; natter buddies add NAME",
    ),
    ("c", "call the contact", "natter call NAME"),
    ("a", "accept the ringing call", "natter answer"),
    ("d", "decline the ringing call", "natter answer --decline"),
    (
        "m",
        "mute / unmute",
        "type m + Enter during natter call/answer",
    ),
    (
        "h",
        "hold / resume (still 50 packets/s)",
        "type h + Enter during natter call/answer",
    ),
    (
        "x",
        "hang up / cancel",
        "type q + Enter, or Ctrl-C, during natter call/answer",
    ),
    ("?", "this help", "natter --help"),
    (
        "q",
        "quit (leaves the overlay)",
        "natter online, then Ctrl-C",
    ),
];

/// A key, as the reducer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    /// Ctrl-C: quit (hangs up first).
    Interrupt,
}

/// Something the UI is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Key(Key),
    /// The clock, in unix seconds (times are shown relative to it).
    Tick(i64),
    Net(Net),
}

/// What the network task reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Net {
    /// Joined the overlay as `me` through supernode `via`.
    Joined { me: String, via: String },
    /// A contact's presence (from a search or a push); `last_seen` in unix
    /// seconds when known.
    Presence {
        name: String,
        status: PresenceStatus,
        last_seen: Option<i64>,
    },
    /// A search found nobody by that name.
    NotFound(String),
    /// A message arrived (already in the inbox); `sent_at` unix seconds.
    Message {
        from: String,
        text: String,
        sent_at: i64,
    },
    /// A message received before this run (from the inbox file).
    Earlier {
        from: String,
        text: String,
        sent_at: i64,
    },
    /// A message this side sent was handed to the supernode.
    Sent {
        to: String,
        id: Vec<u8>,
        text: String,
        sent_at: i64,
    },
    /// Its receipt came: the recipient has it.
    Delivered { to: String, id: Vec<u8> },
    /// Ringing: `from` calls.
    Incoming { from: String },
    /// Calling `to`, not answered yet.
    Dialling { to: String },
    /// The call with `peer` is up; `input` and `output` name the WAV files
    /// or sound cards.
    Connected {
        peer: String,
        input: String,
        output: String,
    },
    /// Live figures of the call.
    Live {
        stats: LiveStats,
        muted: bool,
        held: bool,
    },
    /// The call (or the ringing) ended; `summary` says how.
    CallEnded { peer: String, summary: String },
    /// A one-line notice (an error, a rejoin).
    Notice(String),
}

/// What the I/O loop is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Search(String),
    Chat { to: String, text: String },
    Call(String),
    Accept,
    Decline,
    Mute(bool),
    Hold(bool),
    HangUp,
    Quit,
}

/// What the keyboard is typing into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Normal,
    /// Writing a message to the selected contact.
    Compose,
    /// Typing a name to search.
    Search,
    /// The help screen.
    Help,
}

/// One contact and its presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    pub name: String,
    /// None until a search or a push told.
    pub status: Option<PresenceStatus>,
    pub last_seen: Option<i64>,
}

/// Where a message this side sent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The supernode has it (delivered now, or stored for an offline
    /// recipient).
    Sent,
    /// The recipient's receipt came.
    Delivered,
}

impl Mark {
    /// How the mark reads on screen.
    pub fn label(self) -> &'static str {
        match self {
            Mark::Sent => "[sent]",
            Mark::Delivered => "[delivered]",
        }
    }
}

/// One line of a chat thread.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatLine {
    /// Who wrote it (this user's name for own messages).
    pub from: String,
    pub text: String,
    /// Unix seconds.
    pub at: i64,
    /// Own messages: the id (for the receipt) and the mark.
    pub own: Option<(Vec<u8>, Mark)>,
}

/// The call panel.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CallView {
    #[default]
    Idle,
    Ringing {
        from: String,
    },
    Dialling {
        to: String,
    },
    Active {
        peer: String,
        input: String,
        output: String,
        muted: bool,
        held: bool,
        stats: Option<LiveStats>,
    },
}

/// Everything the screen shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub me: String,
    pub via: String,
    pub now: i64,
    pub contacts: Vec<Contact>,
    pub selected: usize,
    pub mode: Mode,
    pub input: String,
    pub threads: BTreeMap<String, Vec<ChatLine>>,
    pub call: CallView,
    /// The last notice (bottom line).
    pub notice: String,
    pub quit: bool,
}

impl State {
    /// A state for `me` with the buddy list `contacts`, at `now`.
    pub fn new(me: &str, contacts: &[String], now: i64) -> Self {
        Self {
            me: me.to_owned(),
            now,
            contacts: contacts
                .iter()
                .map(|name| Contact {
                    name: name.clone(),
                    status: None,
                    last_seen: None,
                })
                .collect(),
            notice: "? for help".to_owned(),
            ..Self::default()
        }
    }

    /// The selected contact's name.
    pub fn selected_name(&self) -> Option<&str> {
        self.contacts.get(self.selected).map(|c| c.name.as_str())
    }

    /// The thread shown: the selected contact's.
    pub fn thread(&self) -> &[ChatLine] {
        self.selected_name()
            .and_then(|n| self.threads.get(n))
            .map_or(&[], Vec::as_slice)
    }

    /// How a contact's presence reads ("online", "offline, last seen 2
    /// min ago", "unknown").
    pub fn presence_text(&self, contact: &Contact) -> String {
        match (contact.status, contact.last_seen) {
            (None, _) => "unknown".to_owned(),
            (Some(PresenceStatus::Offline), Some(seen)) => {
                format!("offline, seen {}", crate::text::ago(seen, self.now))
            }
            (Some(status), _) => presence_name(status).to_owned(),
        }
    }

    /// Applies one event; returns what to do.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Tick(now) => {
                self.now = now;
                Vec::new()
            }
            Event::Net(net) => {
                self.network(net);
                Vec::new()
            }
            Event::Key(key) => self.key(key),
        }
    }

    fn contact_mut(&mut self, name: &str) -> &mut Contact {
        let i = match self.contacts.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.contacts.push(Contact {
                    name: name.to_owned(),
                    status: None,
                    last_seen: None,
                });
                self.contacts.len() - 1
            }
        };
        &mut self.contacts[i]
    }

    fn push_line(&mut self, peer: &str, line: ChatLine) {
        let thread = self.threads.entry(peer.to_owned()).or_default();
        thread.push(line);
        if thread.len() > THREAD_LIMIT {
            thread.remove(0);
        }
    }

    fn network(&mut self, net: Net) {
        match net {
            Net::Joined { me, via } => {
                self.me = me;
                self.via = via;
            }
            Net::Presence {
                name,
                status,
                last_seen,
            } => {
                let now = self.now;
                let contact = self.contact_mut(&name);
                let was = contact.status;
                contact.status = Some(status);
                if let Some(seen) = last_seen {
                    contact.last_seen = Some(seen);
                } else if status == PresenceStatus::Offline && was != Some(status) {
                    // Went offline just now.
                    contact.last_seen = Some(now);
                }
            }
            Net::NotFound(name) => self.notice = format!("{name}: not found"),
            Net::Message {
                from,
                text,
                sent_at,
            } => {
                self.contact_mut(&from);
                self.notice = format!("message from {from}");
                self.push_line(
                    &from.clone(),
                    ChatLine {
                        from,
                        text,
                        at: sent_at,
                        own: None,
                    },
                );
            }
            Net::Earlier {
                from,
                text,
                sent_at,
            } => {
                self.push_line(
                    &from.clone(),
                    ChatLine {
                        from,
                        text,
                        at: sent_at,
                        own: None,
                    },
                );
            }
            Net::Sent {
                to,
                id,
                text,
                sent_at,
            } => {
                let me = self.me.clone();
                self.push_line(
                    &to,
                    ChatLine {
                        from: me,
                        text,
                        at: sent_at,
                        own: Some((id, Mark::Sent)),
                    },
                );
            }
            Net::Delivered { to, id } => {
                if let Some(line) = self.threads.get_mut(&to).and_then(|t| {
                    t.iter_mut()
                        .find(|l| l.own.as_ref().is_some_and(|(i, _)| *i == id))
                }) && let Some((_, mark)) = line.own.as_mut()
                {
                    *mark = Mark::Delivered;
                }
            }
            Net::Incoming { from } => {
                self.notice = format!("{from} is calling: a accept, d decline");
                self.call = CallView::Ringing { from };
            }
            Net::Dialling { to } => self.call = CallView::Dialling { to },
            Net::Connected {
                peer,
                input,
                output,
            } => {
                self.notice = format!("in a call with {peer}");
                self.call = CallView::Active {
                    peer,
                    input,
                    output,
                    muted: false,
                    held: false,
                    stats: None,
                };
            }
            Net::Live {
                stats: live,
                muted: m,
                held: h,
            } => {
                if let CallView::Active {
                    stats, muted, held, ..
                } = &mut self.call
                {
                    *stats = Some(live);
                    *muted = m;
                    *held = h;
                }
            }
            Net::CallEnded { peer, summary } => {
                self.call = CallView::Idle;
                self.notice = format!("call with {peer} ended: {summary}");
            }
            Net::Notice(text) => self.notice = text,
        }
    }

    fn key(&mut self, key: Key) -> Vec<Action> {
        if key == Key::Interrupt {
            self.quit = true;
            return vec![Action::Quit];
        }
        match self.mode {
            Mode::Help => {
                self.mode = Mode::Normal;
                Vec::new()
            }
            Mode::Compose | Mode::Search => self.typing(key),
            Mode::Normal => self.command_key(key),
        }
    }

    fn typing(&mut self, key: Key) -> Vec<Action> {
        match key {
            Key::Char(c) => {
                if self.input.chars().count() < INPUT_LIMIT && !c.is_control() {
                    self.input.push(c);
                }
                Vec::new()
            }
            Key::Backspace => {
                self.input.pop();
                Vec::new()
            }
            Key::Esc => {
                self.input.clear();
                self.mode = Mode::Normal;
                Vec::new()
            }
            Key::Enter => {
                let text = std::mem::take(&mut self.input).trim().to_owned();
                let mode = std::mem::replace(&mut self.mode, Mode::Normal);
                if text.is_empty() {
                    return Vec::new();
                }
                match mode {
                    Mode::Compose => match self.selected_name() {
                        Some(to) => vec![Action::Chat {
                            to: to.to_owned(),
                            text,
                        }],
                        None => Vec::new(),
                    },
                    Mode::Search => {
                        self.notice = format!("searching {text}...");
                        vec![Action::Search(text)]
                    }
                    Mode::Normal | Mode::Help => Vec::new(),
                }
            }
            Key::Up | Key::Down | Key::Interrupt => Vec::new(),
        }
    }

    fn command_key(&mut self, key: Key) -> Vec<Action> {
        let ringing = matches!(self.call, CallView::Ringing { .. });
        match (key, &self.call) {
            (Key::Up | Key::Char('k'), _) => {
                self.selected = self.selected.saturating_sub(1);
                Vec::new()
            }
            (Key::Down | Key::Char('j'), _) => {
                if self.selected + 1 < self.contacts.len() {
                    self.selected += 1;
                }
                Vec::new()
            }
            (Key::Enter, _) => {
                if self.selected_name().is_some() {
                    self.mode = Mode::Compose;
                }
                Vec::new()
            }
            (Key::Char('/'), _) => {
                self.mode = Mode::Search;
                Vec::new()
            }
            (Key::Char('?'), _) => {
                self.mode = Mode::Help;
                Vec::new()
            }
            (Key::Char('c'), CallView::Idle) => match self.selected_name() {
                Some(name) => {
                    let name = name.to_owned();
                    self.call = CallView::Dialling { to: name.clone() };
                    vec![Action::Call(name)]
                }
                None => Vec::new(),
            },
            (Key::Char('a'), _) if ringing => vec![Action::Accept],
            (Key::Char('d'), _) if ringing => vec![Action::Decline],
            (Key::Char('m'), CallView::Active { muted, .. }) => vec![Action::Mute(!muted)],
            (Key::Char('h'), CallView::Active { held, .. }) => vec![Action::Hold(!held)],
            (Key::Char('x'), CallView::Active { .. } | CallView::Dialling { .. }) => {
                vec![Action::HangUp]
            }
            (Key::Char('q'), CallView::Idle) => {
                self.quit = true;
                vec![Action::Quit]
            }
            (Key::Char('q'), _) => {
                self.notice = "in a call: x hangs up first (Ctrl-C quits anyway)".to_owned();
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(c: char) -> Event {
        Event::Key(Key::Char(c))
    }

    #[test]
    fn writing_to_a_contact_sends_and_the_receipt_marks_it() {
        let mut s = State::new("alice", &["bob".into(), "carol".into()], 1000);
        assert!(s.handle(Event::Key(Key::Down)).is_empty());
        assert_eq!(s.selected_name(), Some("carol"));
        s.handle(Event::Key(Key::Up));
        s.handle(Event::Key(Key::Enter));
        assert_eq!(s.mode, Mode::Compose);
        for c in "hi bob".chars() {
            assert!(s.handle(key(c)).is_empty(), "typing is not a command");
        }
        let actions = s.handle(Event::Key(Key::Enter));
        assert_eq!(
            actions,
            vec![Action::Chat {
                to: "bob".into(),
                text: "hi bob".into()
            }]
        );
        assert_eq!(s.mode, Mode::Normal);
        s.handle(Event::Net(Net::Sent {
            to: "bob".into(),
            id: vec![7],
            text: "hi bob".into(),
            sent_at: 1000,
        }));
        assert_eq!(s.thread()[0].own, Some((vec![7], Mark::Sent)));
        s.handle(Event::Net(Net::Delivered {
            to: "bob".into(),
            id: vec![7],
        }));
        assert_eq!(s.thread()[0].own, Some((vec![7], Mark::Delivered)));
    }

    #[test]
    fn a_ringing_call_is_accepted_or_declined_and_call_keys_need_a_call() {
        let mut s = State::new("alice", &["bob".into()], 1000);
        assert!(s.handle(key('a')).is_empty(), "nothing rings");
        assert!(s.handle(key('m')).is_empty(), "no call to mute");
        s.handle(Event::Net(Net::Incoming { from: "bob".into() }));
        assert_eq!(s.handle(key('d')), vec![Action::Decline]);
        assert_eq!(s.handle(key('a')), vec![Action::Accept]);
        s.handle(Event::Net(Net::Connected {
            peer: "bob".into(),
            input: "silence".into(),
            output: "WAV x.wav".into(),
        }));
        assert_eq!(s.handle(key('m')), vec![Action::Mute(true)]);
        assert_eq!(s.handle(key('h')), vec![Action::Hold(true)]);
        assert!(s.handle(key('q')).is_empty(), "no quitting mid-call by q");
        assert_eq!(s.handle(key('x')), vec![Action::HangUp]);
        s.handle(Event::Net(Net::CallEnded {
            peer: "bob".into(),
            summary: "10.0 s".into(),
        }));
        assert_eq!(s.call, CallView::Idle);
        assert_eq!(s.handle(key('q')), vec![Action::Quit]);
        assert!(s.quit);
    }

    #[test]
    fn presence_and_last_seen_read_as_people_say_them() {
        let mut s = State::new("alice", &["bob".into()], 10_000);
        assert_eq!(s.presence_text(&s.contacts[0]), "unknown");
        s.handle(Event::Net(Net::Presence {
            name: "bob".into(),
            status: PresenceStatus::Offline,
            last_seen: Some(10_000 - 180),
        }));
        assert_eq!(s.presence_text(&s.contacts[0]), "offline, seen 3 min ago");
        s.handle(Event::Net(Net::Presence {
            name: "bob".into(),
            status: PresenceStatus::Online,
            last_seen: None,
        }));
        assert_eq!(s.presence_text(&s.contacts[0]), "online");
        s.handle(Event::Tick(10_100));
        s.handle(Event::Net(Net::Presence {
            name: "bob".into(),
            status: PresenceStatus::Offline,
            last_seen: None,
        }));
        s.handle(Event::Tick(10_100 + 120));
        assert_eq!(s.presence_text(&s.contacts[0]), "offline, seen 2 min ago");
        // A search for someone new adds them.
        s.handle(key('/'));
        for c in "dave".chars() {
            s.handle(key(c));
        }
        assert_eq!(
            s.handle(Event::Key(Key::Enter)),
            vec![Action::Search("dave".into())]
        );
        s.handle(Event::Net(Net::Presence {
            name: "dave".into(),
            status: PresenceStatus::Online,
            last_seen: None,
        }));
        assert_eq!(s.contacts.len(), 2);
    }
}
