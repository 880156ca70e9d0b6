//! Authorization rules: which subjects or groups may submit, read or cancel runs of which
//! algorithms or workgroups. Pure: no I/O, no clock.
//!
//! A rule applies to a caller named in its `subjects` (or `"*"`: any authenticated caller) or
//! holding one of its `groups`; it grants its `actions` on runs whose algorithm is in its
//! `algorithms` **or** whose workgroup is in its `workgroups` (`"*"` matches all). Nothing is
//! allowed that no rule grants. Runs (algorithms calling with their run token) are not subject
//! to rules: they act on their own subtree only (the scheduler checks that).

use serde::{Deserialize, Serialize};

use crate::Principal;

/// What a caller does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Create runs (and set a run's tag).
    Submit,
    /// Read runs: results, metadata, payloads, children, listings, watches.
    Read,
    /// Cancel runs.
    Cancel,
    /// All of them (`"*"`).
    #[serde(rename = "*")]
    All,
}

impl Action {
    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Cancel => "cancel",
            Self::All => "*",
        }
    }

    fn covers(self, wanted: Self) -> bool {
        self == Self::All || self == wanted
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One grant (an entry of `auth.rules`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// Subjects (OIDC subject claim, API key name) it applies to; `"*"`: every caller.
    pub subjects: Vec<String>,
    /// Groups (OIDC groups claim, API key groups) it applies to.
    pub groups: Vec<String>,
    /// What it grants: `submit`, `read`, `cancel`, `"*"`.
    pub actions: Vec<Action>,
    /// Algorithms (template names) it grants on; `"*"`: all.
    pub algorithms: Vec<String>,
    /// Workgroups it grants on; `"*"`: all.
    pub workgroups: Vec<String>,
}

fn listed(list: &[String], name: &str) -> bool {
    list.iter().any(|x| x == "*" || x == name)
}

impl Rule {
    /// Checks the rule.
    ///
    /// # Errors
    /// What is missing.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if self.subjects.is_empty() && self.groups.is_empty() {
            e.push("name the callers it applies to in `subjects` and/or `groups`");
        }
        if self.actions.is_empty() {
            e.push("list its `actions` (submit, read, cancel or \"*\")");
        }
        if self.algorithms.is_empty() && self.workgroups.is_empty() {
            e.push("name the `algorithms` and/or `workgroups` it grants on (\"*\" for all)");
        }
        if [
            &self.subjects,
            &self.groups,
            &self.algorithms,
            &self.workgroups,
        ]
        .iter()
        .any(|l| l.iter().any(|x| x.trim().is_empty()))
        {
            e.push("names must not be empty");
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }

    fn applies_to(&self, p: &Principal) -> bool {
        listed(&self.subjects, &p.subject) || p.groups.iter().any(|g| self.groups.contains(g))
    }

    fn grants(&self, action: Action, algorithm: &str, workgroup: &str) -> bool {
        self.actions.iter().any(|a| a.covers(action))
            && (listed(&self.algorithms, algorithm) || listed(&self.workgroups, workgroup))
    }
}

/// The rules of `auth.rules`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// A policy of `rules`.
    #[must_use]
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// True when a rule grants `action` to `p` on runs of `algorithm` in `workgroup`.
    #[must_use]
    pub fn allows(&self, p: &Principal, action: Action, algorithm: &str, workgroup: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.applies_to(p) && r.grants(action, algorithm, workgroup))
    }

    /// True when a rule grants `action` to `p` on `workgroup` by naming it (or `"*"`) in its
    /// `workgroups`: moving a run into another workgroup (`customConfiguration.workgroupRef`)
    /// needs this, so a grant on an algorithm alone cannot place runs in any workgroup.
    #[must_use]
    pub fn allows_workgroup(&self, p: &Principal, action: Action, workgroup: &str) -> bool {
        self.rules.iter().any(|r| {
            r.applies_to(p)
                && r.actions.iter().any(|a| a.covers(action))
                && listed(&r.workgroups, workgroup)
        })
    }

    /// The 403 message for a refused `action`: who asked, what was missing, and where grants are
    /// configured.
    #[must_use]
    pub fn denial(
        &self,
        p: &Principal,
        action: Action,
        algorithm: &str,
        workgroup: &str,
    ) -> String {
        let applying = self.rules.iter().filter(|r| r.applies_to(p)).count();
        let hint = if applying == 0 {
            "no rule in auth.rules names this subject or any of its groups".to_owned()
        } else {
            format!(
                "{applying} rule(s) in auth.rules apply to it, none grants '{action}' on algorithm '{algorithm}' or workgroup '{workgroup}'"
            )
        };
        format!(
            "{} may not {action} runs of algorithm '{algorithm}' (workgroup '{workgroup}'): {hint}; ask the platform team for a grant",
            p.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    fn who(subject: &str, groups: &[&str]) -> Principal {
        Principal {
            subject: subject.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            method: Method::Oidc,
        }
    }

    fn policy() -> Policy {
        let rules: Vec<Rule> = serde_yaml::from_str(
            r#"
- groups: [team-a]
  actions: [submit, read, cancel]
  algorithms: [alpha]
- subjects: [carol]
  actions: [read]
  workgroups: [wg-b]
- subjects: ["*"]
  actions: [read]
  algorithms: [public]
- groups: [ops]
  actions: ["*"]
  workgroups: ["*"]
"#,
        )
        .unwrap();
        for r in &rules {
            r.validate().unwrap();
        }
        Policy::new(rules)
    }

    #[test]
    fn rules_grant_what_they_name_and_nothing_else() {
        let p = policy();
        let alice = who("alice", &["team-a"]);
        assert!(p.allows(&alice, Action::Submit, "alpha", "wg-a"));
        assert!(p.allows(&alice, Action::Cancel, "alpha", "wg-b"));
        assert!(!p.allows(&alice, Action::Submit, "beta", "wg-a"));
        let carol = who("carol", &[]);
        assert!(p.allows(&carol, Action::Read, "beta", "wg-b"));
        assert!(!p.allows(&carol, Action::Cancel, "beta", "wg-b"));
        assert!(!p.allows(&carol, Action::Read, "beta", "wg-a"));
        let anyone = who("mallory", &[]);
        assert!(p.allows(&anyone, Action::Read, "public", "x"));
        assert!(!p.allows(&anyone, Action::Submit, "public", "x"));
        let ops = who("olga", &["ops"]);
        assert!(p.allows(&ops, Action::Cancel, "beta", "wg-z"));
        assert!(p.allows_workgroup(&ops, Action::Submit, "wg-z"));
        assert!(!p.allows_workgroup(&alice, Action::Submit, "wg-a"));
    }

    #[test]
    fn denials_say_what_is_missing() {
        let p = policy();
        let strict = Policy::new(p.rules[..2].to_vec());
        let m = strict.denial(&who("mallory", &["x"]), Action::Cancel, "alpha", "wg-a");
        assert!(m.contains("'mallory'"), "{m}");
        assert!(
            m.contains("may not cancel runs of algorithm 'alpha'"),
            "{m}"
        );
        assert!(
            m.contains("no rule in auth.rules names this subject"),
            "{m}"
        );
        let m = p.denial(&who("alice", &["team-a"]), Action::Submit, "beta", "wg-a");
        assert!(m.contains("2 rule(s) in auth.rules apply"), "{m}");
    }

    #[test]
    fn incomplete_rules_are_refused() {
        let r = Rule {
            actions: vec![Action::Read],
            ..Rule::default()
        };
        let e = r.validate().unwrap_err();
        assert!(e.contains("`subjects` and/or `groups`"), "{e}");
        assert!(e.contains("`algorithms` and/or `workgroups`"), "{e}");
    }
}
