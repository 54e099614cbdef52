//! Call features inside an answered call, end to end between SIPp phones: what business
//! phones and IVRs send while talking (docs/architecture.md). Ports: each test takes its own
//! (`Ports::take`: testkit's port blocks).

use crate::common::calls::{Ports, Scenario, Service, call};
use crate::common::number;

#[test]
fn an_info_a_message_and_an_update_cross_the_call_and_their_answers_come_back() {
    let ports = Ports::take();
    let service = Service::start("info", &ports, &["--trusted", "127.0.0.0/8"]);
    // The callee checks the INFO's DTMF body and type and refuses the MESSAGE with 415; the
    // caller's scenario fails unless it gets the 200 and the 415 back.
    call(
        &ports,
        &service,
        Scenario::new("uas_info.xml"),
        Scenario::new("uac_info.xml"),
    );
    let metrics = service.metrics();
    for method in ["INFO", "MESSAGE", "UPDATE"] {
        let sample = format!("signaling_sip_requests_total{{method=\"{method}\"}} ");
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(counted >= Some(1.0), "{method}: {counted:?}\n{metrics}");
    }
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr:?}");
    assert_eq!(number(cdr, "sip_status"), 200);
}
