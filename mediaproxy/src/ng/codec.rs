//! The ng dictionary: bencode (what Kamailio and OpenSIPS send) and JSON (what some other
//! clients send), read into one [`Value`] tree and written back in the encoding a request
//! came in.
//!
//! Written here rather than taken from a crate (docs/decisions.md): real clients send
//! dictionaries with **unsorted** keys (Kamailio: `supports, sdp, replace, call-id, ...`), which
//! canonical decoders refuse; replies must keep the order we give (`result` where rtpengine
//! puts it); and the input comes from the network, so size, nesting and element counts are
//! bounded here, and every byte sequence gets an answer or an error, never a panic (fuzzed:
//! `fuzz/fuzz_targets/ng_datagram.rs`).
//!
//! Bencode as rtpengine reads it: `i<-?digits>e` integers (64-bit, no leading zeros, no `-0`),
//! `<len>:<bytes>` strings of any bytes, `l...e` lists, `d...e` dictionaries whose keys are
//! strings. Stricter than rtpengine on purpose: an unterminated list or dictionary and
//! trailing bytes are errors, not silently accepted.

/// One ng value. Dictionaries keep their keys in the order they came (or were built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Self>),
    Dict(Vec<(Vec<u8>, Self)>),
}

/// Most nested lists and dictionaries in one request (rtpengine's deepest is 3).
pub(crate) const MAX_DEPTH: usize = 16;
/// Most values in one request, all levels together.
pub(crate) const MAX_ITEMS: usize = 4096;

/// Why a dictionary could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("unexpected byte {byte:#04x} at {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bad integer at byte {0}")]
    BadInteger(usize),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_ITEMS} values")]
    TooMany,
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("a dictionary key that is not a string at byte {0}")]
    KeyNotString(usize),
    #[error("JSON: {0}")]
    Json(String),
}

impl Value {
    /// A byte string from text.
    pub(crate) fn text(text: &str) -> Self {
        Self::Bytes(text.as_bytes().to_vec())
    }

    /// A dictionary of `entries`, in that order.
    pub(crate) fn dict(entries: Vec<(&str, Self)>) -> Self {
        Self::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The value of `key` in a dictionary (the first, if a client repeats it).
    pub(crate) fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Dict(entries) => entries
                .iter()
                .find(|(k, _)| k.as_slice() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A byte string's text (lossy), or an integer's decimal form.
    pub(crate) fn as_text(&self) -> Option<String> {
        match self {
            Self::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Self::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Bencode of this value.
    pub(crate) fn to_bencode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_bencode(&mut out);
        out
    }

    fn write_bencode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(n) => out.extend_from_slice(format!("i{n}e").as_bytes()),
            Self::Bytes(bytes) => write_string(out, bytes),
            Self::List(items) => {
                out.push(b'l');
                for item in items {
                    item.write_bencode(out);
                }
                out.push(b'e');
            }
            Self::Dict(entries) => {
                out.push(b'd');
                for (key, value) in entries {
                    write_string(out, key);
                    value.write_bencode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// JSON of this value (byte strings as text, lossy where they are not UTF-8).
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json()).unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Self::Int(n) => serde_json::Value::from(*n),
            Self::Bytes(bytes) => serde_json::Value::from(String::from_utf8_lossy(bytes)),
            Self::List(items) => items.iter().map(Self::json).collect(),
            Self::Dict(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.json()))
                    .collect(),
            ),
        }
    }
}

fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// Reads one bencoded value that spans all of `input`.
pub(crate) fn decode_bencode(input: &[u8]) -> Result<Value, CodecError> {
    let mut reader = Reader {
        input,
        at: 0,
        items: 0,
    };
    let value = reader.value(0)?;
    match input.len() - reader.at {
        0 => Ok(value),
        rest => Err(CodecError::Trailing(rest)),
    }
}

/// Reads a JSON object (or any JSON value) into a [`Value`]: strings become byte strings,
/// integers integers, booleans 1 and 0; other numbers and `null` are refused.
pub(crate) fn decode_json(input: &[u8]) -> Result<Value, CodecError> {
    let json: serde_json::Value =
        serde_json::from_slice(input).map_err(|e| CodecError::Json(e.to_string()))?;
    let mut items = 0;
    from_json(&json, 0, &mut items)
}

fn from_json(
    json: &serde_json::Value,
    depth: usize,
    items: &mut usize,
) -> Result<Value, CodecError> {
    *items += 1;
    if *items > MAX_ITEMS {
        return Err(CodecError::TooMany);
    }
    if depth > MAX_DEPTH {
        return Err(CodecError::TooDeep);
    }
    Ok(match json {
        serde_json::Value::String(text) => Value::text(text),
        serde_json::Value::Bool(b) => Value::Int(i64::from(*b)),
        serde_json::Value::Number(n) => Value::Int(
            n.as_i64()
                .ok_or_else(|| CodecError::Json(format!("{n} is not a 64-bit integer")))?,
        ),
        serde_json::Value::Array(values) => Value::List(
            values
                .iter()
                .map(|v| from_json(v, depth + 1, items))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => Value::Dict(
            map.iter()
                .map(|(k, v)| Ok((k.as_bytes().to_vec(), from_json(v, depth + 1, items)?)))
                .collect::<Result<_, CodecError>>()?,
        ),
        serde_json::Value::Null => return Err(CodecError::Json("null".into())),
    })
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
    items: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, CodecError> {
        self.input
            .get(self.at)
            .copied()
            .ok_or(CodecError::Truncated(self.at))
    }

    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(CodecError::TooMany);
        }
        match self.peek()? {
            b'i' => {
                self.at += 1;
                let n = self.number(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => self.string().map(Value::Bytes),
            b'l' | b'd' if depth >= MAX_DEPTH => Err(CodecError::TooDeep),
            b'l' => {
                self.at += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.at += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                self.at += 1;
                let mut entries = Vec::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(CodecError::KeyNotString(self.at));
                    }
                    let key = self.string()?;
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                self.at += 1;
                Ok(Value::Dict(entries))
            }
            byte => Err(CodecError::Unexpected { byte, at: self.at }),
        }
    }

    /// A decimal integer up to `end` (consumed): no leading zeros, no `-0`.
    fn number(&mut self, end: u8) -> Result<i64, CodecError> {
        let start = self.at;
        let stop = self.input[start..]
            .iter()
            .position(|b| *b == end)
            .ok_or(CodecError::Truncated(self.input.len()))?;
        let digits = &self.input[start..start + stop];
        let magnitude = digits.strip_prefix(b"-").unwrap_or(digits);
        let canonical = !magnitude.is_empty()
            && magnitude.iter().all(u8::is_ascii_digit)
            && (magnitude == b"0" || magnitude[0] != b'0')
            && digits != b"-0";
        if !canonical {
            return Err(CodecError::BadInteger(start));
        }
        let n = std::str::from_utf8(digits)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or(CodecError::BadInteger(start))?;
        self.at = start + stop + 1;
        Ok(n)
    }

    fn string(&mut self) -> Result<Vec<u8>, CodecError> {
        let start = self.at;
        let len = self.number(b':')?;
        let len = usize::try_from(len).map_err(|_| CodecError::BadInteger(start))?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.input.len())
            .ok_or(CodecError::Truncated(self.input.len()))?;
        let bytes = self.input[self.at..end].to_vec();
        self.at = end;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kamailios_unsorted_dictionary_is_read_in_its_order_and_written_back_the_same() {
        let wire = b"d8:supportsl10:load limite3:sdp5:v=0\r\n7:replacel6:origine7:call-id3:abc13:received-froml3:IP49:127.0.0.1e8:from-tag2:ft7:command5:offere";
        let value = decode_bencode(wire).unwrap();
        let Value::Dict(entries) = &value else {
            panic!("a dictionary")
        };
        let keys: Vec<String> = entries
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "supports",
                "sdp",
                "replace",
                "call-id",
                "received-from",
                "from-tag",
                "command"
            ]
        );
        assert_eq!(value.get("command"), Some(&Value::text("offer")));
        assert_eq!(value.to_bencode(), wire.to_vec(), "byte for byte");
    }

    #[test]
    fn integers_strings_of_any_bytes_and_nesting_round_trip() {
        let value = Value::dict(vec![
            ("n", Value::Int(-42)),
            ("z", Value::Int(0)),
            ("raw", Value::Bytes(vec![0, 255, b':', b'e'])),
            (
                "l",
                Value::List(vec![Value::dict(vec![("x", Value::List(vec![]))])]),
            ),
        ]);
        assert_eq!(decode_bencode(&value.to_bencode()).unwrap(), value);
    }

    #[test]
    fn malformed_input_is_an_error_naming_what_is_wrong() {
        for (wire, expected) in [
            (&b"i03e"[..], CodecError::BadInteger(1)),
            (b"i-0e", CodecError::BadInteger(1)),
            (b"ie", CodecError::BadInteger(1)),
            (b"05:hello", CodecError::BadInteger(0)),
            (b"5:hel", CodecError::Truncated(5)),
            (b"d3:key", CodecError::Truncated(6)),
            (b"li1e", CodecError::Truncated(4)),
            (b"di1ei2ee", CodecError::KeyNotString(1)),
            (b"i1ei2e", CodecError::Trailing(3)),
            (b"x", CodecError::Unexpected { byte: b'x', at: 0 }),
            (b"99999999999999999999:", CodecError::BadInteger(0)),
        ] {
            assert_eq!(decode_bencode(wire), Err(expected), "{wire:?}");
        }
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!("{}{}", "l".repeat(MAX_DEPTH + 1), "e".repeat(MAX_DEPTH + 1));
        assert_eq!(decode_bencode(deep.as_bytes()), Err(CodecError::TooDeep));
        let fine = format!("{}{}", "l".repeat(MAX_DEPTH), "e".repeat(MAX_DEPTH));
        assert!(decode_bencode(fine.as_bytes()).is_ok());
        let many = format!("l{}e", "i1e".repeat(MAX_ITEMS));
        assert_eq!(decode_bencode(many.as_bytes()), Err(CodecError::TooMany));
    }

    #[test]
    fn json_is_read_into_the_same_tree_and_written_as_json() {
        let value =
            decode_json(br#"{"command":"ping","flags":["a","b"],"n":3,"yes":true}"#).unwrap();
        assert_eq!(value.get("command"), Some(&Value::text("ping")));
        assert_eq!(value.get("n"), Some(&Value::Int(3)));
        assert_eq!(value.get("yes"), Some(&Value::Int(1)));
        let back: serde_json::Value = serde_json::from_slice(&value.to_json()).unwrap();
        assert_eq!(back["flags"][1], "b");
        assert!(decode_json(b"{\"x\":1.5}").is_err());
        assert!(decode_json(b"{\"x\":null}").is_err());
    }
}
