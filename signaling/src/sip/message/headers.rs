//! Header fields (RFC 3261 section 7.3): [`Headers`] in received order under canonical names,
//! compact forms expanded (section 7.3.3), and values split at top-level commas.

use super::CSeq;

/// Expands a compact header name (RFC 3261 section 7.3.3 and later RFCs) and normalises the
/// case of well-known names; unknown names keep their spelling.
pub fn canonical_name(name: &str) -> String {
    let full = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "e" | "content-encoding" => "Content-Encoding",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "f" | "from" => "From",
        "s" | "subject" => "Subject",
        "k" | "supported" => "Supported",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "o" | "event" => "Event",
        "r" | "refer-to" => "Refer-To",
        "b" | "referred-by" => "Referred-By",
        "u" | "allow-events" => "Allow-Events",
        "x" | "session-expires" => "Session-Expires",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "record-route" => "Record-Route",
        "route" => "Route",
        "expires" => "Expires",
        "authorization" => "Authorization",
        "www-authenticate" => "WWW-Authenticate",
        "proxy-authorization" => "Proxy-Authorization",
        "proxy-authenticate" => "Proxy-Authenticate",
        "user-agent" => "User-Agent",
        "server" => "Server",
        "allow" => "Allow",
        "require" => "Require",
        "min-expires" => "Min-Expires",
        "min-se" => "Min-SE",
        "rseq" => "RSeq",
        "rack" => "RAck",
        _ => return name.to_owned(),
    };
    full.to_owned()
}

/// Headers in received order. Names are canonical; values are unfolded and trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Header lines held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of a header (whole line).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header line of a name, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a comma-separable header (Via, Contact, Route, ...), split at top-level
    /// commas (not inside quotes or angle brackets).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.all(name).flat_map(split_values)
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((canonical_name(name), value.into()));
    }

    /// Replaces every line of `name` with one value (appending if absent).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].1 = value;
                let mut index = 0;
                self.0.retain(|(n, _)| {
                    let keep = index <= first || !n.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Removes the first value of a multi-value header (e.g. the top Via), keeping the others.
    pub fn remove_first_value(&mut self, name: &str) {
        if let Some(index) = self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let rest: Vec<String> = split_values(&self.0[index].1)
                .skip(1)
                .map(str::to_owned)
                .collect();
            if rest.is_empty() {
                self.0.remove(index);
            } else {
                self.0[index].1 = rest.join(", ");
            }
        }
    }

    /// Replaces the first value of a multi-value header (e.g. the top Via), keeping the others.
    pub fn replace_first_value(&mut self, name: &str, value: &str) {
        if let Some(index) = self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            let mut values: Vec<String> =
                split_values(&self.0[index].1).map(str::to_owned).collect();
            match values.first_mut() {
                Some(first) => *first = value.to_owned(),
                None => values.push(value.to_owned()),
            }
            self.0[index].1 = values.join(", ");
        }
    }

    /// Inserts a header line before every other line (e.g. a new top Via).
    pub fn prepend(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(0, (canonical_name(name), value.into()));
    }

    /// The CSeq header, parsed.
    pub fn cseq(&self) -> Option<CSeq> {
        CSeq::parse(self.get("CSeq")?)
    }

    /// The Call-ID, or "" when absent (parsing guarantees it on complete messages).
    pub fn call_id(&self) -> &str {
        self.get("Call-ID").unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_values(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty())
}
