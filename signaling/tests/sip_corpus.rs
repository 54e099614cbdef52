//! Runs the SIP regression corpus in `tests/sip_corpus/`: every file in `valid/` must parse,
//! write back and parse again to the same message, with its Via and From/To readable; every
//! file in `invalid/` must fail with the reason in its `.expect` file. Add real-world failures
//! here as files.

use std::path::Path;

use signaling::sip::header::{NameAddr, Via};
use signaling::sip::message::{Message, parse};

fn files(dir: &str, extension: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sip_corpus")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_messages_parse_and_round_trip() {
    let files = files("valid", "sip");
    assert!(files.len() >= 9);
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let message = parse(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        let written = match &message {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        };
        let again = parse(&written).unwrap_or_else(|e| panic!("{name} after writing: {e}"));
        assert_eq!(again, message, "{name}: round trip changed the message");
        let headers = message.headers();
        for via in headers.values("Via") {
            assert!(Via::parse(via).is_some(), "{name}: Via {via:?}");
        }
        let from =
            NameAddr::parse(headers.get("From").unwrap()).unwrap_or_else(|| panic!("{name}: From"));
        assert!(from.tag().is_some(), "{name}: From tag");
        NameAddr::parse(headers.get("To").unwrap()).unwrap_or_else(|| panic!("{name}: To"));
    }
}

#[test]
fn invalid_messages_fail_with_the_expected_reason() {
    let files = files("invalid", "sip");
    assert!(files.len() >= 6);
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let expected = std::fs::read_to_string(path.with_extension("expect")).unwrap();
        let error = parse(&data).expect_err(&name);
        assert!(
            error.reason.starts_with(expected.trim()),
            "{name}: got {:?}",
            error.reason
        );
        assert!(error.request, "{name}: requests get a 400");
        assert!(
            error.headers.get("Via").is_some(),
            "{name}: the Via survives for the reply"
        );
    }
}
