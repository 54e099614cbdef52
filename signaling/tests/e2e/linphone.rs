//! Real phones instead of SIPp: three Debian `linphonec` (linphone-cli 5.1) registered with
//! digest authentication, playing and recording tones, driven through their command line by
//! `tests/linphone/transfer.py` (Python standard library only), which also reads the CDR rows
//! and signaling's log and prints what failed. What these tests add over the SIPp transfer of
//! `features` is a SIP stack that decides on its own: its REFER and what it makes of the
//! NOTIFYs, the re-INVITE it is sent, its own timers and RTP.
//!
//! Ports: each test takes one block of 200 (`testkit::PortBlock`); the script's top comment
//! says which port of it does what (SIP, metrics, the phones' SIP and RTP, the relay range).
//!
//! Without `linphonec` the tests are skipped, unless `CI` is set: there they fail, as
//! `scripts/test` installs linphone-cli.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::PortBlock;

use crate::common::{SIGNALING, Scratch};

/// Longer than the script's own deadline (80 s plus twice the talk time, three times when the
/// transfer is attended) and its clean-up: only a script that hangs regardless meets it.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

/// Whether `linphonec` is on the PATH.
fn linphonec_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("linphonec").is_file()))
}

/// Runs the transfer scenario with `args` in a port block and scratch folder of its own and
/// asserts it passed (exit 0), showing its output (what failed, signaling's log, the phones'
/// output) when it did not. Skipped when linphonec is missing outside CI.
fn transfer(name: &str, args: &[&str]) {
    if !linphonec_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "linphonec is not installed, and CI is set: scripts/test installs linphone-cli"
        );
        eprintln!(
            "SKIPPED {name}: linphonec is not installed (apt-get install linphone-cli; \
             scripts/test installs it; with CI set this fails)"
        );
        return;
    }
    let ports = PortBlock::take(200);
    let dir = Scratch::new(&format!("sig-e2e-linphone-{name}"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/linphone/transfer.py");
    let output_path = dir.join("transfer.out");
    let output = File::create(&output_path).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--signaling", SIGNALING])
        .args(["--base-port", &ports.start().to_string()])
        .arg("--workdir")
        .arg(dir.join("run"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("python3 runs (apt-get install python3)");
    // The script kills what it started on every way out, and its children die with it (they
    // get SIGKILL when it does), so killing it here leaves nothing behind.
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    match status {
        Some(status) if status.success() => println!("{}", text.trim_end()),
        Some(status) => panic!("transfer.py {args:?} failed ({status}):\n{text}"),
        None => panic!(
            "transfer.py {args:?} did not finish within {} s, killed:\n{text}",
            SCRIPT_LIMIT.as_secs()
        ),
    }
}

/// A blind transfer by the callee, between real phones: alice calls bob, both hear each
/// other's tone; bob transfers her to carol (REFER); signaling calls carol and moves alice's
/// audio to her; alice hears carol's tone where she heard bob's (and carol hears alice), bob is
/// released, carol hangs up. Two CDR rows, linked: the first ended by the callee's transfer,
/// the second between alice and carol (carol in the callee's place), both answered with audio
/// both ways and a clean media verdict; signaling logs no warning.
#[test]
fn a_callee_transfers_a_real_phone_to_a_third_one_and_the_audio_follows() {
    transfer("callee", &["--transferor", "bob"]);
}

/// The same blind transfer by the caller: alice calls bob, then transfers bob to carol; bob
/// hears alice, then carol; carol takes the caller's place in the second CDR row, and the
/// first one is ended by the caller's transfer.
#[test]
fn a_caller_transfers_a_real_phone_to_a_third_one_and_the_audio_follows() {
    transfer("caller", &["--transferor", "alice"]);
}

/// An attended transfer (RFC 3891 `Replaces`) by a real phone: alice calls bob and they talk;
/// bob puts her on hold, calls carol and talks to her, then joins them (linphone's `transfer 1
/// --to-call 2`: a REFER on the call with alice whose Refer-To replaces bob's call with carol).
/// signaling re-INVITEs carol on her own dialog, moves alice onto carol's offer and hangs bob
/// up on both calls; alice and carol hear each other, carol hangs up. Three CDR rows: both of
/// bob's calls point to the new pairing (alice and carol, under call 1's call_id plus
/// ";transfer=1"), which points back to call 1; all answered with audio both ways.
#[test]
fn an_attended_transfer_by_a_real_phone_joins_its_two_calls_and_the_audio_follows() {
    transfer("attended", &["--attended"]);
}
