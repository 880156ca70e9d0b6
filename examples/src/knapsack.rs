//! Exact 0/1 knapsack by dynamic programming.
//!
//! Payload: `{"capacity": u64, "items": [{"name": str, "weight": u64, "value": u64}, ...]}`.
//! Result: `{"totalValue": n, "totalWeight": n, "chosen": ["name", ...]}` (input order).

use serde::Deserialize;
use serde_json::json;

use crate::nexus::Outcome;

/// Largest accepted capacity.
pub const MAX_CAPACITY: u64 = 10_000_000;
/// Largest accepted number of items.
pub const MAX_ITEMS: usize = 10_000;
/// Largest DP table (items × capacity cells, one bit each for reconstruction:
/// 400M cells = 50 MB), so the solver stays within a small memory limit.
pub const MAX_TABLE_CELLS: u64 = 400_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub name: String,
    pub weight: u64,
    pub value: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    pub capacity: u64,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    pub total_value: u64,
    pub total_weight: u64,
    /// Indices into `Problem::items`, ascending.
    pub chosen: Vec<usize>,
}

/// Checks the limits; the message becomes `errorCause = "invalid input: <message>"`.
pub fn validate(problem: &Problem) -> Result<(), String> {
    if problem.capacity > MAX_CAPACITY {
        return Err(format!(
            "capacity {} exceeds the maximum of {MAX_CAPACITY}",
            problem.capacity
        ));
    }
    if problem.items.len() > MAX_ITEMS {
        return Err(format!(
            "{} items exceed the maximum of {MAX_ITEMS}",
            problem.items.len()
        ));
    }
    problem
        .items
        .iter()
        .try_fold(0u64, |acc, item| acc.checked_add(item.value))
        .ok_or_else(|| "the sum of all item values does not fit in 64 bits".to_owned())?;
    let table = table_cells(problem);
    if table > MAX_TABLE_CELLS {
        return Err(format!(
            "problem too large: the DP table would have {table} cells (items that fit × usable capacity), maximum is {MAX_TABLE_CELLS}"
        ));
    }
    Ok(())
}

/// Items that can fit at all, and the capacity that can actually be used.
fn reduce(problem: &Problem) -> (Vec<usize>, usize) {
    let candidates: Vec<usize> = (0..problem.items.len())
        .filter(|&i| problem.items[i].weight <= problem.capacity)
        .collect();
    let weight_sum: u64 = candidates
        .iter()
        .fold(0u64, |acc, &i| acc.saturating_add(problem.items[i].weight));
    let capacity = problem.capacity.min(weight_sum);
    (candidates, usize::try_from(capacity).unwrap_or(usize::MAX))
}

fn table_cells(problem: &Problem) -> u64 {
    let (candidates, capacity) = reduce(problem);
    (candidates.len() as u64).saturating_mul(capacity as u64 + 1)
}

/// Solves the instance exactly. Call [`validate`] first: the limits keep the
/// table small and the value sums from overflowing.
pub fn solve(problem: &Problem) -> Solution {
    let (candidates, capacity) = reduce(problem);
    let width = capacity + 1;
    // best[c] = best value with total weight <= c using the items seen so far.
    let mut best = vec![0u64; width];
    // keep bit (k, c): candidate k improved best[c] when it was considered.
    let mut keep = vec![0u64; (candidates.len() * width).div_ceil(64)];

    for (k, &i) in candidates.iter().enumerate() {
        let item = &problem.items[i];
        let w = item.weight as usize; // <= capacity, fits
        let row = k * width;
        for c in (w..width).rev() {
            let with_item = best[c - w] + item.value;
            if with_item > best[c] {
                best[c] = with_item;
                let bit = row + c;
                keep[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    let mut chosen = Vec::new();
    let mut c = capacity;
    for (k, &i) in candidates.iter().enumerate().rev() {
        let bit = k * width + c;
        if keep[bit / 64] & (1 << (bit % 64)) != 0 {
            chosen.push(i);
            c -= problem.items[i].weight as usize;
        }
    }
    chosen.reverse();

    let total_value = chosen.iter().map(|&i| problem.items[i].value).sum();
    let total_weight = chosen.iter().map(|&i| problem.items[i].weight).sum();
    debug_assert_eq!(total_value, best[capacity]);
    Solution {
        total_value,
        total_weight,
        chosen,
    }
}

/// Entry point used by `main`: parse, validate, solve, build the result.
pub fn run(payload: &[u8]) -> Outcome {
    let problem: Problem = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("[knapsack] invalid payload: {e}");
            return Outcome::invalid_input(format!(
                "payload is not a knapsack problem ({e}); expected {{\"capacity\": n, \"items\": [{{\"name\": s, \"weight\": n, \"value\": n}}]}}"
            ));
        }
    };
    println!(
        "[knapsack] capacity {}, {} items",
        problem.capacity,
        problem.items.len()
    );
    if let Err(e) = validate(&problem) {
        eprintln!("[knapsack] rejected: {e}");
        return Outcome::invalid_input(e);
    }
    let started = std::time::Instant::now();
    let solution = solve(&problem);
    println!(
        "[knapsack] optimum value {} with weight {} ({} items chosen) in {:?}",
        solution.total_value,
        solution.total_weight,
        solution.chosen.len(),
        started.elapsed()
    );
    let names: Vec<&str> = solution
        .chosen
        .iter()
        .map(|&i| problem.items[i].name.as_str())
        .collect();
    Outcome::Success(json!({
        "totalValue": solution.total_value,
        "totalWeight": solution.total_weight,
        "chosen": names,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, weight: u64, value: u64) -> Item {
        Item {
            name: name.to_owned(),
            weight,
            value,
        }
    }

    fn example() -> Problem {
        Problem {
            capacity: 10,
            items: vec![
                item("a", 5, 10),
                item("b", 4, 40),
                item("c", 6, 30),
                item("d", 3, 50),
            ],
        }
    }

    #[test]
    fn example_instance() {
        let s = solve(&example());
        assert_eq!(s.total_value, 90);
        assert_eq!(s.total_weight, 7);
        assert_eq!(s.chosen, vec![1, 3]);
    }

    #[test]
    fn example_payload_file_matches() {
        let payload = include_bytes!("../payloads/knapsack.json");
        let Outcome::Success(result) = run(payload) else {
            panic!("expected success")
        };
        assert_eq!(
            result,
            json!({"totalValue": 90, "totalWeight": 7, "chosen": ["b", "d"]})
        );
    }

    #[test]
    fn empty_items() {
        let s = solve(&Problem {
            capacity: 10,
            items: vec![],
        });
        assert_eq!(
            s,
            Solution {
                total_value: 0,
                total_weight: 0,
                chosen: vec![]
            }
        );
        let s = solve(&Problem {
            capacity: 0,
            items: vec![item("x", 1, 5)],
        });
        assert_eq!(s.total_value, 0);
        assert!(s.chosen.is_empty());
    }

    #[test]
    fn zero_weight_items_are_taken() {
        let s = solve(&Problem {
            capacity: 0,
            items: vec![item("free", 0, 7), item("heavy", 1, 9)],
        });
        assert_eq!(s.total_value, 7);
        assert_eq!(s.chosen, vec![0]);
    }

    /// Tiny linear congruential generator (Numerical Recipes constants).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn brute_force(problem: &Problem) -> u64 {
        let n = problem.items.len();
        (0u32..1 << n)
            .filter_map(|mask| {
                let (w, v) = (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .fold((0, 0), |(w, v), i| {
                        (w + problem.items[i].weight, v + problem.items[i].value)
                    });
                (w <= problem.capacity).then_some(v)
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn matches_brute_force_on_random_instances() {
        let mut rng = Lcg(0x5eed);
        for round in 0..200 {
            let n = rng.below(11) as usize;
            let items = (0..n)
                .map(|i| item(&format!("i{i}"), rng.below(15), rng.below(100)))
                .collect();
            let problem = Problem {
                capacity: rng.below(40),
                items,
            };
            let s = solve(&problem);
            assert_eq!(
                s.total_value,
                brute_force(&problem),
                "round {round}: {problem:?}"
            );
            // The reported set is feasible, consistent and in input order.
            assert!(s.total_weight <= problem.capacity, "round {round}");
            assert_eq!(
                s.total_value,
                s.chosen
                    .iter()
                    .map(|&i| problem.items[i].value)
                    .sum::<u64>()
            );
            assert_eq!(
                s.total_weight,
                s.chosen
                    .iter()
                    .map(|&i| problem.items[i].weight)
                    .sum::<u64>()
            );
            assert!(s.chosen.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn rejects_invalid_input() {
        let too_big = Problem {
            capacity: MAX_CAPACITY + 1,
            items: vec![],
        };
        assert!(validate(&too_big).unwrap_err().contains("capacity"));
        let many = Problem {
            capacity: 1,
            items: vec![item("x", 1, 1); MAX_ITEMS + 1],
        };
        assert!(validate(&many).unwrap_err().contains("items"));
        let overflow = Problem {
            capacity: 1,
            items: vec![item("x", 1, u64::MAX), item("y", 1, 1)],
        };
        assert!(validate(&overflow).is_err());
        let table = Problem {
            capacity: MAX_CAPACITY,
            items: vec![item("x", 1000, 1); MAX_ITEMS],
        };
        assert!(validate(&table).unwrap_err().contains("too large"));
        assert!(validate(&example()).is_ok());

        for payload in [
            &b"not json"[..],
            br#"{"capacity": -1, "items": []}"#,
            br#"{"items": []}"#,
        ] {
            match run(payload) {
                Outcome::Failure { cause, .. } => {
                    assert!(cause.starts_with("invalid input: "), "{cause}")
                }
                other => panic!("expected failure, got {other:?}"),
            }
        }
        match run(br#"{"capacity": 20000000, "items": []}"#) {
            Outcome::Failure { cause, .. } => assert!(cause.starts_with("invalid input: capacity")),
            other => panic!("expected failure, got {other:?}"),
        }
    }
}
