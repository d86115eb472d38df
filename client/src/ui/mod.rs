//! The terminal UI (`natter ui`, or `natter` alone on a terminal), in two
//! layers:
//!
//! | module | what |
//! |---|---|
//! | [`state`] | pure: the state (the view model) and its reducer, events in, actions out; no terminal, no network, no clock |
//! | [`view`] | draws the state with ratatui (tested on its `TestBackend`) |
//! | [`app`] | the I/O: the terminal, the key thread, the network task that stays joined and runs calls through the library, bounded channels between them |
//!
//! The UI has no protocol logic of its own: searching, chat, presence,
//! answering and placing calls, mute, hold and hang-up are the library's,
//! the same code the CLI's commands run ([`state::KEYS`] lists each key's
//! command-line equivalent).

pub mod app;
pub mod state;
pub mod view;
