//! The request splitter on arbitrary bytes: never panics, and what it reports is consistent (the
//! payload span lies inside the body and is structurally whole; the rest is the body with that
//! span replaced by `null`; nesting past the limit is refused).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The scheduler's module itself (it needs only std and thiserror), so this target does not build
// the whole scheduler.
#[path = "../../scheduler/src/request_split.rs"]
#[allow(dead_code)]
mod request_split;

use request_split::{SplitError, check_depth, split};

const MAX_DEPTH: usize = 16;

fuzz_target!(|data: &[u8]| {
    match split(data, 4096, MAX_DEPTH) {
        Ok(s) => {
            let mut payload_ok = true;
            if let Some(span) = s.payload {
                let start = usize::try_from(span.start).unwrap();
                let end = start + usize::try_from(span.len).unwrap();
                assert!(end <= data.len(), "span {span:?} past the body ({})", data.len());
                let mut rebuilt = data[..start].to_vec();
                rebuilt.extend_from_slice(b"null");
                rebuilt.extend_from_slice(&data[end..]);
                assert_eq!(rebuilt, s.rest, "rest = body with the payload replaced by null");
                payload_ok = serde_json::from_slice::<serde_json::Value>(&data[start..end]).is_ok();
            } else {
                assert_eq!(s.rest, data, "without a payload the rest is the body");
            }
            // The scanner finds structure without validating (the rest is parsed, the payload
            // validated afterwards): for a valid JSON request, both scanners see the same depth.
            if payload_ok && serde_json::from_slice::<serde_json::Value>(&s.rest).is_ok() {
                assert!(check_depth(data, MAX_DEPTH).is_ok(), "split accepted what check_depth refuses");
            }
        }
        Err(SplitError::TooDeep(n)) => assert_eq!(n, MAX_DEPTH),
        Err(_) => {}
    }
});
