//! The terminal UI's screens, drawn on ratatui's `TestBackend` from states
//! the reducer built out of events (as the network task and the keyboard
//! send them): the text on the buffer is what a person would read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_client::call::LiveStats;
use natter_client::ui::state::{Event, Key, Net, State};
use natter_client::ui::view;
use natter_proto::messages::PresenceStatus;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const NOW: i64 = 1_796_148_717;

/// The screen as lines of text (trailing blanks trimmed).
fn screen(state: &State) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(110, 30)).unwrap();
    terminal.draw(|f| view::render(f, state)).unwrap();
    let buffer = terminal.backend().buffer().clone();
    let area = buffer.area;
    (0..area.height)
        .map(|y| {
            (0..area.width)
                .map(|x| buffer.cell((x, y)).map_or(" ", |c| c.symbol()).to_owned())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect()
}

#[track_caller]
fn assert_shows(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "the screen lacks {needle:?}:\n{}",
        lines.join("\n")
    );
}

fn net(state: &mut State, net: Net) {
    assert!(state.handle(Event::Net(net)).is_empty());
}

fn joined() -> State {
    let mut state = State::new("alice", &["bob".into(), "carol".into(), "dave".into()], NOW);
    net(
        &mut state,
        Net::Joined {
            me: "alice".into(),
            via: "127.0.0.1:5001".into(),
        },
    );
    net(
        &mut state,
        Net::Presence {
            name: "bob".into(),
            status: PresenceStatus::Online,
            last_seen: None,
        },
    );
    net(
        &mut state,
        Net::Presence {
            name: "carol".into(),
            status: PresenceStatus::Offline,
            last_seen: Some(NOW - 180),
        },
    );
    state
}

#[test]
fn contacts_show_live_presence_and_last_seen_in_words() {
    let mut state = joined();
    let lines = screen(&state);
    assert_shows(&lines, "natter: alice");
    assert_shows(&lines, "via 127.0.0.1:5001");
    assert_shows(&lines, "> ● bob online");
    assert_shows(&lines, "○ carol offline, seen 3 min ago");
    assert_shows(&lines, "○ dave unknown");
    assert!(!lines.join("\n").contains(&(NOW - 180).to_string()));
    // bob goes offline: a push, then the clock moves on.
    net(
        &mut state,
        Net::Presence {
            name: "bob".into(),
            status: PresenceStatus::Offline,
            last_seen: None,
        },
    );
    state.handle(Event::Tick(NOW + 125));
    assert_shows(&screen(&state), "bob offline, seen 2 min ago");
    // A search typed at the keyboard.
    state.handle(Event::Key(Key::Char('/')));
    for c in "erin".chars() {
        state.handle(Event::Key(Key::Char(c)));
    }
    assert_shows(&screen(&state), "search> erin_");
}

#[test]
fn a_chat_thread_shows_times_and_the_delivery_receipt() {
    let mut state = joined();
    // What the inbox held before this run starts the thread.
    net(
        &mut state,
        Net::Earlier {
            from: "bob".into(),
            text: "from last week".into(),
            sent_at: NOW - 8 * 86_400,
        },
    );
    net(
        &mut state,
        Net::Message {
            from: "bob".into(),
            text: "are you there?".into(),
            sent_at: NOW - 3 * 86_400,
        },
    );
    net(
        &mut state,
        Net::Sent {
            to: "bob".into(),
            id: vec![1; 16],
            text: "yes, hello".into(),
            sent_at: NOW - 120,
        },
    );
    net(
        &mut state,
        Net::Sent {
            to: "bob".into(),
            id: vec![2; 16],
            text: "still there?".into(),
            sent_at: NOW - 30,
        },
    );
    net(
        &mut state,
        Net::Delivered {
            to: "bob".into(),
            id: vec![1; 16],
        },
    );
    let lines = screen(&state);
    assert_shows(&lines, "Chat with bob");
    assert_shows(&lines, "2026-11-23 18:11 UTC bob: from last week");
    assert_shows(&lines, "2026-11-28 18:11 UTC bob: are you there?");
    assert_shows(&lines, "2 min ago alice: yes, hello [delivered]");
    assert_shows(&lines, "30 s ago alice: still there? [sent]");
    // A message that tries to draw on the terminal is shown escaped.
    net(
        &mut state,
        Net::Message {
            from: "bob".into(),
            text: "\u{1b}[2Jgone".into(),
            sent_at: NOW,
        },
    );
    assert_shows(&screen(&state), "bob: \\u{1b}[2Jgone");
    // Writing: Enter, text, Enter gives one chat action.
    state.handle(Event::Key(Key::Enter));
    for c in "ok".chars() {
        state.handle(Event::Key(Key::Char(c)));
    }
    assert_shows(&screen(&state), "to bob> ok_");
}

#[test]
fn a_ringing_call_offers_accept_and_decline() {
    let mut state = joined();
    net(&mut state, Net::Incoming { from: "bob".into() });
    let lines = screen(&state);
    assert_shows(&lines, "Incoming call from bob   [a] accept  [d] decline");
    assert_shows(&lines, "bob is calling: a accept, d decline");
}

#[test]
fn an_active_call_shows_path_rtt_jitter_loss_mos_and_the_audio() {
    let mut state = joined();
    net(
        &mut state,
        Net::Connected {
            peer: "bob".into(),
            input: "WAV /tmp/speech.wav".into(),
            output: "sound card default".into(),
        },
    );
    assert_shows(&screen(&state), "connecting media...");
    net(
        &mut state,
        Net::Live {
            stats: LiveStats {
                elapsed_s: 72.4,
                path: Some("relay"),
                remote: Some("127.0.0.1:5003".parse().unwrap()),
                rtt_ms: Some(3),
                jitter_ms: 1.24,
                lost: 4,
                sent: 3620,
                received: 3611,
                mos: 4.12,
                delay_ms: 61.0,
                held_by_peer: false,
            },
            muted: true,
            held: false,
        },
    );
    let lines = screen(&state);
    assert_shows(&lines, "In call with bob  1:12  MUTED");
    assert_shows(
        &lines,
        "path relay (127.0.0.1:5003)  RTT 3 ms  jitter 1.2 ms",
    );
    assert_shows(
        &lines,
        "sent 3620  received 3611  lost 4  MOS 4.12 (mouth-to-ear 61 ms)",
    );
    assert_shows(&lines, "in: WAV /tmp/speech.wav   out: sound card default");
    assert_shows(&lines, "[m] mute  [h] hold  [x] hang up");
    assert!(!lines.join("\n").contains("BY PEER"));
    // the peer puts the call on hold (its hold signal): the next figures say so
    net(
        &mut state,
        Net::Live {
            stats: LiveStats {
                elapsed_s: 73.4,
                held_by_peer: true,
                ..LiveStats::default()
            },
            muted: false,
            held: false,
        },
    );
    assert_shows(&screen(&state), "In call with bob  1:13  ON HOLD BY PEER");
    net(
        &mut state,
        Net::CallEnded {
            peer: "bob".into(),
            summary: "72.4 s, received 3611 packets, MOS 4.12".into(),
        },
    );
    let lines = screen(&state);
    assert!(!lines.join("\n").contains("In call with"));
    assert_shows(&lines, "call with bob ended: 72.4 s");
}

#[test]
fn the_help_lists_every_key_with_its_command_line_equivalent() {
    let mut state = joined();
    state.handle(Event::Key(Key::Char('?')));
    let lines = screen(&state);
    for (key, _, cli) in natter_client::ui::state::KEYS {
        assert_shows(&lines, key);
        assert_shows(&lines, cli);
    }
    state.handle(Event::Key(Key::Char(' ')));
    assert!(!screen(&state).join("\n").contains("any key closes"));
}
