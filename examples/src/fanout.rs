//! `fanout`: sum of squares by divide and conquer over an execution tree.
//!
//! A list of at most `leaf` numbers is solved directly. A longer one is split in two halves,
//! each solved by a child run of the same algorithm (both created in one batch with the
//! nexus-sdk's `map` as children of this run, awaited through the server's stage stream, their
//! results read from their signed URLs, in order),
//! and the two results are combined. The result also says how many runs the subtree took and how
//! deep it went, so a caller can see the tree that solved it.

use serde_json::{Value, json};

use crate::nexus::Outcome;

/// Largest list accepted (keeps a demo tree small).
const MAX_NUMBERS: usize = 100_000;

#[derive(Debug, PartialEq)]
struct Task {
    numbers: Vec<i64>,
    leaf: usize,
}

fn parse(payload: &[u8]) -> Result<Task, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let numbers: Vec<i64> = v
        .get("numbers")
        .and_then(Value::as_array)
        .ok_or("`numbers` must be an array of integers")?
        .iter()
        .map(|n| {
            n.as_i64()
                .ok_or(format!("`numbers` must hold integers, got {n}"))
        })
        .collect::<Result<_, _>>()?;
    if numbers.len() > MAX_NUMBERS {
        return Err(format!(
            "at most {MAX_NUMBERS} numbers, got {}",
            numbers.len()
        ));
    }
    let leaf = match v.get("leaf") {
        None => 10,
        Some(l) => {
            l.as_u64()
                .filter(|l| *l >= 1)
                .ok_or(format!("`leaf` must be a positive integer, got {l}"))? as usize
        }
    };
    Ok(Task { numbers, leaf })
}

fn direct(numbers: &[i64]) -> Value {
    let sum: i128 = numbers
        .iter()
        .map(|n| i128::from(*n) * i128::from(*n))
        .sum();
    json!({ "sumOfSquares": sum.to_string().parse::<Value>().unwrap_or(Value::Null), "runs": 1, "depth": 0 })
}

/// Solves the payload: directly when small (or outside Nexus), else through two child runs.
pub fn run(payload: &[u8]) -> Outcome {
    let task = match parse(payload) {
        Ok(t) => t,
        Err(e) => return Outcome::failure("invalid input", e),
    };
    if task.numbers.len() <= task.leaf || std::env::var(nexus_sdk::SCHEDULER_URL).is_err() {
        return Outcome::Success(direct(&task.numbers));
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::failure("runtime", e.to_string()),
    };
    match rt.block_on(split(task)) {
        Ok(v) => Outcome::Success(v),
        Err(e) => Outcome::failure("a child run failed", e),
    }
}

async fn split(task: Task) -> Result<Value, String> {
    let nexus = nexus_sdk::Nexus::from_env()
        .await
        .map_err(|e| e.to_string())?;
    let algorithm = std::env::var("NEXUS__ALGORITHM_NAME").unwrap_or_else(|_| "fanout".into());
    let (left, right) = task.numbers.split_at(task.numbers.len() / 2);
    // Both halves in one all-or-none batch of children, awaited together, results in order.
    let halves: Vec<Value> = [left, right]
        .iter()
        .map(|half| json!({ "numbers": half, "leaf": task.leaf }))
        .collect();
    println!(
        "[nexus-demo] fanout: 2 children for {} and {} numbers",
        left.len(),
        right.len()
    );
    let results = nexus
        .map(&algorithm, &halves)
        .await
        .map_err(|e| e.to_string())?;
    let mut sum: i128 = 0;
    let mut runs = 1;
    let mut depth = 0;
    for (i, r) in results.iter().enumerate() {
        sum += r["sumOfSquares"]
            .as_i64()
            .map(i128::from)
            .or_else(|| r["sumOfSquares"].as_u64().map(i128::from))
            .ok_or(format!("child {i} returned no sumOfSquares: {r}"))?;
        runs += r["runs"].as_u64().unwrap_or(1);
        depth = depth.max(r["depth"].as_u64().unwrap_or(0) + 1);
    }
    Ok(
        json!({ "sumOfSquares": sum.to_string().parse::<Value>().unwrap_or(Value::Null), "runs": runs, "depth": depth }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_lists_are_solved_directly() {
        assert_eq!(
            direct(&[1, 2, 3]),
            json!({"sumOfSquares": 14, "runs": 1, "depth": 0})
        );
        assert_eq!(
            parse(br#"{"numbers": [1, 2], "leaf": 3}"#),
            Ok(Task {
                numbers: vec![1, 2],
                leaf: 3
            })
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert!(parse(b"[]").unwrap_err().contains("numbers"));
        assert!(
            parse(br#"{"numbers": [1, "x"]}"#)
                .unwrap_err()
                .contains("integers")
        );
        assert!(
            parse(br#"{"numbers": [1], "leaf": 0}"#)
                .unwrap_err()
                .contains("leaf")
        );
    }
}
