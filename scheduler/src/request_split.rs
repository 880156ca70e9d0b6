//! Splits a v1 run request body into its small part and the byte range of its
//! `algorithmParameters` value, reading the body once and holding only the small part in memory.
//!
//! The v1 API carries the payload *inside* the JSON request (`{"algorithmParameters": …}`), so a
//! 200 MiB payload arrives as a 200 MiB JSON document. Parsing it with `serde_json` into a
//! `RawValue` holds it whole in memory (twice, with the body). Instead the body is spooled to
//! disk and scanned with [`split`]: a structural scanner (strings, escapes, nesting) that copies
//! every byte to `rest` except the `algorithmParameters` value, which it replaces by `null` and
//! reports as a [`Span`] of the spooled body. The caller then
//! * parses `rest` (small: tag, configuration overrides, …) with `serde_json` as usual,
//! * validates the payload's JSON syntax by streaming the span through
//!   `serde_json::from_reader::<_, IgnoredAny>` (no allocation for strings or nesting), and
//! * streams the span to the payload store (multipart for S3) while hashing it.
//!
//! The scanner only finds structure; it does not validate: malformed JSON outside the payload is
//! rejected when `rest` is parsed, malformed JSON inside it by the validation pass.

use std::io::Read;

/// Where the payload value lies in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// The body without its payload value, and where that value was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The body with the `algorithmParameters` value replaced by `null`.
    pub rest: Vec<u8>,
    /// The value's place in the body; `None` when the top-level object has no such key.
    pub payload: Option<Span>,
}

/// Why a body could not be split.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Reading the body failed.
    #[error("reading the request body: {0}")]
    Io(#[from] std::io::Error),
    /// The part of the body outside the payload is larger than allowed.
    #[error("the request without algorithmParameters is over {0} bytes")]
    RestTooLarge(usize),
    /// The body is not a JSON object (or is cut short).
    #[error("{0}")]
    Malformed(&'static str),
    /// Arrays and objects are nested deeper than the limit given to [`split`].
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
}

/// The key whose value is split out.
pub const PAYLOAD_KEY: &[u8] = b"algorithmParameters";
/// Longest key compared (longer keys are never the payload key).
const MAX_KEY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Before the opening `{`.
    Start,
    /// Inside the object, expecting a key (or `}`).
    Key,
    /// Inside a key string.
    InKey,
    /// After a key, expecting `:`.
    Colon,
    /// After `:`, expecting a value.
    Value,
    /// Inside a value (nested or scalar).
    InValue,
    /// After a value, expecting `,` or `}`.
    Comma,
    /// After the closing `}`.
    Done,
}

/// Splits `body` (see the module docs). At most `max_rest` bytes are kept in memory; arrays and
/// objects may nest at most `max_depth` levels (the request object itself is level 1), so that a
/// payload of 100,000 `[` is refused here instead of reaching a recursive parser downstream.
///
/// # Errors
/// [`SplitError`].
pub fn split(mut body: impl Read, max_rest: usize, max_depth: usize) -> Result<Split, SplitError> {
    let mut rest = Vec::new();
    let mut payload = None;
    let mut state = Top::Start;
    let mut key = Vec::new();
    let mut key_escaped = false;
    let mut capturing = false; // the current value is the payload
    // Inside a value: nesting depth, string and escape state; `scalar` for numbers and literals.
    let (mut depth, mut in_str, mut esc, mut scalar) = (0usize, false, false, false);
    let mut offset: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let push = |rest: &mut Vec<u8>, b: u8| -> Result<(), SplitError> {
        if rest.len() >= max_rest {
            return Err(SplitError::RestTooLarge(max_rest));
        }
        rest.push(b);
        Ok(())
    };
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            let at = offset;
            offset += 1;
            // A value ends at a byte that belongs to the object again (scalars end there).
            if state == Top::InValue
                && scalar
                && matches!(b, b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
            {
                if capturing {
                    let s: &mut Span = payload.as_mut().expect("capturing a payload");
                    s.len = at - s.start;
                    capturing = false;
                }
                scalar = false;
                state = Top::Comma;
            }
            match state {
                Top::Start => {
                    push(&mut rest, b)?;
                    match b {
                        b'{' => state = Top::Key,
                        b' ' | b'\t' | b'\n' | b'\r' => {}
                        _ => {
                            return Err(SplitError::Malformed(
                                "the request body is not a JSON object",
                            ));
                        }
                    }
                }
                Top::Key => {
                    push(&mut rest, b)?;
                    match b {
                        b'"' => {
                            key.clear();
                            key_escaped = false;
                            esc = false;
                            state = Top::InKey;
                        }
                        b'}' => state = Top::Done,
                        _ => {}
                    }
                }
                Top::InKey => {
                    push(&mut rest, b)?;
                    if esc {
                        esc = false;
                        if key.len() < MAX_KEY {
                            key.push(b);
                        }
                    } else if b == b'\\' {
                        esc = true;
                        key_escaped = true;
                        if key.len() < MAX_KEY {
                            key.push(b);
                        }
                    } else if b == b'"' {
                        state = Top::Colon;
                    } else if key.len() < MAX_KEY {
                        key.push(b);
                    }
                }
                Top::Colon => {
                    push(&mut rest, b)?;
                    if b == b':' {
                        state = Top::Value;
                    }
                }
                Top::Value => {
                    if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                        push(&mut rest, b)?;
                        continue;
                    }
                    capturing = is_payload_key(&key, key_escaped) && payload.is_none();
                    if capturing {
                        payload = Some(Span { start: at, len: 0 });
                        for c in b"null" {
                            push(&mut rest, *c)?;
                        }
                    } else {
                        push(&mut rest, b)?;
                    }
                    state = Top::InValue;
                    (depth, in_str, esc, scalar) = (0, false, false, false);
                    match b {
                        b'{' | b'[' => {
                            depth = 1;
                            if depth + 1 > max_depth {
                                return Err(SplitError::TooDeep(max_depth));
                            }
                        }
                        b'"' => in_str = true,
                        _ => scalar = true,
                    }
                }
                Top::InValue => {
                    if !capturing {
                        push(&mut rest, b)?;
                    }
                    if scalar {
                        continue;
                    }
                    if in_str {
                        if esc {
                            esc = false;
                        } else if b == b'\\' {
                            esc = true;
                        } else if b == b'"' {
                            in_str = false;
                        }
                    } else {
                        match b {
                            b'"' => in_str = true,
                            b'{' | b'[' => {
                                depth += 1;
                                if depth + 1 > max_depth {
                                    return Err(SplitError::TooDeep(max_depth));
                                }
                            }
                            b'}' | b']' => depth = depth.saturating_sub(1),
                            _ => {}
                        }
                    }
                    if depth == 0 && !in_str {
                        if capturing {
                            let s = payload.as_mut().expect("capturing a payload");
                            s.len = at + 1 - s.start;
                            capturing = false;
                        }
                        state = Top::Comma;
                    }
                }
                Top::Comma => {
                    push(&mut rest, b)?;
                    match b {
                        b',' => state = Top::Key,
                        b'}' => state = Top::Done,
                        _ => {}
                    }
                }
                Top::Done => {
                    if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                        return Err(SplitError::Malformed(
                            "the request body has data after its JSON object",
                        ));
                    }
                    push(&mut rest, b)?;
                }
            }
        }
    }
    match state {
        Top::Done => Ok(Split { rest, payload }),
        Top::Start => Err(SplitError::Malformed("the request body is empty")),
        _ => Err(SplitError::Malformed(
            "the request body ends in the middle of the JSON object",
        )),
    }
}

/// Checks that arrays and objects in the JSON text `body` nest at most `max_depth` levels (a
/// top-level object is level 1). Only structure is looked at (strings and escapes are skipped);
/// malformed JSON is left to the parser.
///
/// # Errors
/// `max_depth` when the text nests deeper.
pub fn check_depth(body: &[u8], max_depth: usize) -> Result<(), usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in body {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(max_depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a raw key (as written, escapes included) names the payload.
fn is_payload_key(raw: &[u8], escaped: bool) -> bool {
    if !escaped {
        return raw == PAYLOAD_KEY;
    }
    // A key written with escapes ("\u0061lgorithmParameters") is the same key once decoded.
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k.as_bytes() == PAYLOAD_KEY)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn run(body: &str) -> (Value, Option<Value>) {
        let s = split(body.as_bytes(), 1 << 20, 128).unwrap();
        let rest: Value = serde_json::from_slice(&s.rest).unwrap();
        let payload = s.payload.map(|sp| {
            let start = usize::try_from(sp.start).unwrap();
            let end = start + usize::try_from(sp.len).unwrap();
            serde_json::from_str(&body[start..end]).unwrap()
        });
        (rest, payload)
    }

    #[test]
    fn object_payload_is_cut_out() {
        let body = r#"{"tag": "t", "algorithmParameters": {"a": [1, {"b": "}]\"x"}]}, "customConfiguration": null}"#;
        let (rest, p) = run(body);
        assert_eq!(
            rest,
            json!({"tag": "t", "algorithmParameters": null, "customConfiguration": null})
        );
        assert_eq!(p, Some(json!({"a": [1, {"b": "}]\"x"}]})));
    }

    #[test]
    fn scalar_string_and_array_payloads() {
        for (v, expected) in [
            ("42", json!(42)),
            ("-1.5e3", json!(-1500.0)),
            ("true", json!(true)),
            (r#""a,}b""#, json!("a,}b")),
            ("[1,[2,3]]", json!([1, [2, 3]])),
        ] {
            let body = format!(r#"{{"algorithmParameters":{v},"tag":"x"}}"#);
            let (rest, p) = run(&body);
            assert_eq!(
                rest,
                json!({"algorithmParameters": null, "tag": "x"}),
                "{v}"
            );
            assert_eq!(p, Some(expected), "{v}");
            let body = format!(r#"{{ "algorithmParameters" : {v} }}"#);
            assert!(run(&body).1.is_some(), "{v} last");
        }
    }

    #[test]
    fn nested_key_of_the_same_name_is_not_the_payload() {
        let body = r#"{"customConfiguration": {"algorithmParameters": 1}, "algorithmParameters": {"x": 2}}"#;
        let (rest, p) = run(body);
        assert_eq!(
            rest["customConfiguration"],
            json!({"algorithmParameters": 1})
        );
        assert_eq!(p, Some(json!({"x": 2})));
    }

    #[test]
    fn escaped_key_is_recognised() {
        let body = r#"{"\u0061lgorithmParameters": {"x": 1}}"#;
        assert_eq!(run(body).1, Some(json!({"x": 1})));
    }

    #[test]
    fn missing_payload_and_bad_bodies() {
        assert_eq!(run(r#"{"tag": "x"}"#).1, None);
        for (body, msg) in [
            ("", "empty"),
            ("[1]", "not a JSON object"),
            (r#"{"algorithmParameters": {"a": 1}"#, "ends in the middle"),
            (r#"{"algorithmParameters": "abc"#, "ends in the middle"),
        ] {
            let e = split(body.as_bytes(), 1 << 20, 128)
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{body}: {e}");
        }
    }

    #[test]
    fn rest_is_bounded() {
        let big = "x".repeat(10_000);
        let body = format!(r#"{{"tag": "{big}", "algorithmParameters": {{}}}}"#);
        assert!(matches!(
            split(body.as_bytes(), 1000, 128),
            Err(SplitError::RestTooLarge(1000))
        ));
        // A huge payload is fine: it never enters `rest`.
        let body = format!(r#"{{"algorithmParameters": {{"note": "{big}{big}"}}, "tag": "t"}}"#);
        let s = split(body.as_bytes(), 1000, 128).unwrap();
        assert_eq!(s.payload.unwrap().len, 20_012);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z\\\\\"{}\\[\\],: ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the payload and the other fields, cutting out the span and parsing both
        /// parts gives back the document serde_json sees.
        #[test]
        fn split_agrees_with_serde(payload in arb_json(), tag in arb_json(), pretty in any::<bool>()) {
            let doc = json!({"tag": tag, "algorithmParameters": payload.clone(), "z": 1});
            let body = if pretty { serde_json::to_string_pretty(&doc).unwrap() } else { doc.to_string() };
            let (rest, p) = run(&body);
            prop_assert_eq!(p, Some(payload));
            let mut expected = doc.clone();
            expected["algorithmParameters"] = Value::Null;
            prop_assert_eq!(rest, expected);
        }
    }

    #[test]
    fn nesting_is_bounded_in_both_scanners() {
        let deep = |n: usize| {
            format!(
                r#"{{"algorithmParameters": {}1{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // The request object is level 1, so a payload of 127 arrays is level 128.
        assert!(split(deep(127).as_bytes(), 1 << 20, 128).is_ok());
        assert!(matches!(
            split(deep(128).as_bytes(), 1 << 20, 128),
            Err(SplitError::TooDeep(128))
        ));
        assert!(matches!(
            split(deep(100_000).as_bytes(), 1 << 20, 128),
            Err(SplitError::TooDeep(128))
        ));
        assert_eq!(check_depth(deep(127).as_bytes(), 128), Ok(()));
        assert_eq!(check_depth(deep(128).as_bytes(), 128), Err(128));
        // Brackets inside strings are not structure.
        let quoted = format!(r#"{{"a": "{}"}}"#, "[".repeat(1000));
        assert_eq!(check_depth(quoted.as_bytes(), 2), Ok(()));
        assert!(split(quoted.as_bytes(), 1 << 20, 2).is_ok());
    }
}
