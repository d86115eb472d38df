//! The typed call report (`natter call --stats-json`), which the NAT lab
//! reads back from the client's output: `proto::report::CallReport::from_json`.
//! Total; a report that parses writes JSON and text, and its JSON parses
//! again (numbers are rounded when written, so not to the same report).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::report::CallReport;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(report) = CallReport::from_json(json) else {
        return;
    };
    let _ = report.to_text();
    let again = CallReport::from_json(&report.to_json()).expect("a report we wrote parses");
    assert_eq!(again.peer, report.peer);
    assert_eq!(again.path, report.path);
});
