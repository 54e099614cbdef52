//! Runs the SDP corpus in `tests/sdp_corpus/` (phones, FreeSWITCH, Asterisk, WebRTC-ish,
//! T.38, SRTP SDES, hold, video, IPv6, LF-only): the rewrite must change only `c=`, `m=`
//! ports, `a=rtcp:` and the `o=` version, and copy every other line byte for byte.

use std::net::IpAddr;
use std::path::Path;

use signaling::sdp::{Rewrite, parse, rewrite};

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdp_corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sdp"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, String::from_utf8(std::fs::read(&p).unwrap()).unwrap())
        })
        .collect()
}

const MAY_CHANGE: [&str; 4] = ["c=", "m=", "a=rtcp:", "o="];

#[test]
fn rewrite_changes_only_what_must_change() {
    let corpus = corpus();
    assert!(corpus.len() >= 10);
    for (proxy, base) in [("203.0.113.5", 30000u16), ("2001:db8::99", 40000)] {
        let address: IpAddr = proxy.parse().unwrap();
        for (name, sdp) in &corpus {
            let before = parse(sdp).unwrap_or_else(|e| panic!("{name}: {e}"));
            let ports: Vec<Option<u16>> = before
                .media
                .iter()
                .enumerate()
                .map(|(i, m)| (m.port != 0).then_some(base + 2 * i as u16))
                .collect();
            let plan = Rewrite {
                address,
                ports: ports.clone(),
                origin_version: before.origin_version.map(|v| v + 1),
                origin_identity: None,
            };
            let out = rewrite(sdp, &plan).unwrap();
            let old_lines: Vec<&str> = sdp.split_inclusive('\n').collect();
            let new_lines: Vec<&str> = out.split_inclusive('\n').collect();
            assert_eq!(old_lines.len(), new_lines.len(), "{name}: line count");
            for (old, new) in old_lines.iter().zip(&new_lines) {
                if !MAY_CHANGE.iter().any(|p| old.starts_with(p)) {
                    assert_eq!(old, new, "{name}: a line that must not change changed");
                }
                assert_eq!(
                    old.ends_with("\r\n"),
                    new.ends_with("\r\n"),
                    "{name}: line ending"
                );
            }
            let after = parse(&out).unwrap_or_else(|e| panic!("{name} rewritten: {e}\n{out}"));
            assert_eq!(after.media.len(), before.media.len(), "{name}");
            assert_eq!(
                after.origin_version,
                before.origin_version.map(|v| v + 1),
                "{name}"
            );
            for (i, (old, new)) in before.media.iter().zip(&after.media).enumerate() {
                assert_eq!(new.codecs, old.codecs, "{name} m={i}: codecs");
                assert_eq!(new.direction, old.direction, "{name} m={i}: direction");
                assert_eq!(new.kind, old.kind, "{name} m={i}: kind");
                match ports[i] {
                    None => assert_eq!(new.port, 0, "{name} m={i}: disabled line kept"),
                    Some(port) => {
                        assert_eq!(new.port, port, "{name} m={i}: port");
                        let on_hold = old.address.is_some_and(|a| a.is_unspecified());
                        let expected = if on_hold { old.address } else { Some(address) };
                        assert_eq!(new.address, expected, "{name} m={i}: address");
                        if !old.rtcp_mux {
                            assert_eq!(new.rtcp_port, port + 1, "{name} m={i}: rtcp");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn corpus_facts_the_relay_relies_on() {
    let corpus: std::collections::HashMap<String, String> = corpus().into_iter().collect();
    let webrtc = parse(&corpus["webrtc_ish_opus_mux.sdp"]).unwrap();
    assert!(webrtc.media[0].rtcp_mux);
    assert_eq!(webrtc.media[0].rtcp_port, 52418);
    let opus = webrtc.media[0]
        .codecs
        .iter()
        .find(|c| c.encoding == "opus")
        .unwrap();
    assert_eq!((opus.clock_rate, opus.channels), (48000, 2));
    let fs = parse(&corpus["freeswitch_offer.sdp"]).unwrap();
    assert_eq!(fs.media[0].rtcp_port, 24013);
    let hold = parse(&corpus["hold_sendonly.sdp"]).unwrap();
    assert!(hold.media[0].address.unwrap().is_unspecified());
    assert_eq!(hold.media[0].direction, proto::domain::Direction::SendOnly);
    let t38 = parse(&corpus["t38_reinvite.sdp"]).unwrap();
    assert_eq!(t38.media[1].kind, proto::domain::MediaKind::Other);
    assert_eq!(t38.media[0].port, 0);
    let lf = parse(&corpus["lf_only_with_uep.sdp"]).unwrap();
    assert_eq!(lf.media[0].address, Some("192.0.2.8".parse().unwrap()));
}
