//! Which steps wait for approval before they run, and why: a table of gates, first
//! match wins. Decided once per step when a plan (submitted, or proposed by a planner)
//! is resolved; the reason becomes the step's message while it awaits approval.

use glob::{MatchOptions, Pattern};

/// What the gates look at for one step.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    /// The step itself says `requires_approval = true`.
    pub asked: bool,
    /// Its agent profile (empty for a literal command).
    pub agent: &'a str,
    /// That profile says `requires_approval = true`.
    pub profile_requires: bool,
    /// The literal command (empty for an agent step).
    pub command: &'a [String],
    /// The daemon's `[safety] require_approval` globs.
    pub rules: &'a [String],
}

type Row = fn(&Gate) -> Option<String>;

/// The gates, in order: the step's own, its profile's, the daemon's rules.
const GATES: [(&str, Row); 3] = [
    ("step", |g| g.asked.then(String::new)),
    ("profile", |g| {
        (g.profile_requires && !g.agent.is_empty())
            .then(|| format!("agent profile `{}` requires approval", g.agent))
    }),
    ("rule", |g| {
        matching_rule(g.command, g.rules)
            .map(|rule| format!("command matches safety rule `{rule}`"))
    }),
];

/// Whether the step waits for approval (`Some`), with the reason (empty when the step
/// asked for it itself).
pub fn gate(g: &Gate) -> Option<String> {
    GATES.iter().find_map(|(_, row)| row(g))
}

/// `*` and `?` match any characters, `/` and spaces included.
const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

/// Shells whose `-c SCRIPT` is itself a command line.
const SHELLS: [&str; 5] = ["sh", "bash", "dash", "zsh", "ksh"];

/// The command lines a literal command stands for: its arguments joined by spaces, and
/// the script of a shell's `-c`.
pub fn command_lines(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        return Vec::new();
    }
    let mut lines = vec![command.join(" ")];
    let program = command[0].rsplit('/').next().unwrap_or_default();
    if SHELLS.contains(&program)
        && let Some(i) = command.iter().position(|a| a == "-c")
        && let Some(script) = command.get(i + 1)
    {
        lines.push(script.trim().to_string());
    }
    lines
}

/// The first rule (in the config's order) matching one of the command's lines.
pub fn matching_rule<'r>(command: &[String], rules: &'r [String]) -> Option<&'r str> {
    let lines = command_lines(command);
    rules
        .iter()
        .find(|rule| {
            Pattern::new(rule).is_ok_and(|p| lines.iter().any(|l| p.matches_with(l, OPTIONS)))
        })
        .map(String::as_str)
}

/// Why a rule cannot be used (checked when the config is read).
pub fn check_rule(rule: &str) -> Result<(), String> {
    if rule.trim().is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    Pattern::new(rule)
        .map(|_| ())
        .map_err(|e| format!("`{rule}` is not a glob pattern: {}", e.msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn rules() -> Vec<String> {
        argv(&["git push*", "rm -rf *", "kubectl delete*"])
    }

    fn literal<'a>(command: &'a [String], rules: &'a [String]) -> Gate<'a> {
        Gate {
            asked: false,
            agent: "",
            profile_requires: false,
            command,
            rules,
        }
    }

    #[test]
    fn a_literal_command_matching_a_rule_waits_with_the_rule_as_reason() {
        let (r, c) = (rules(), argv(&["git", "push", "origin", "main"]));
        assert_eq!(
            gate(&literal(&c, &r)).as_deref(),
            Some("command matches safety rule `git push*`")
        );
        let c = argv(&["rm", "-rf", "/tmp/x"]);
        assert_eq!(
            gate(&literal(&c, &r)).as_deref(),
            Some("command matches safety rule `rm -rf *`")
        );
    }

    #[test]
    fn a_shell_script_is_matched_as_a_command_line_too() {
        let r = rules();
        let c = argv(&["/bin/sh", "-c", "  git push --force origin HEAD"]);
        assert_eq!(matching_rule(&c, &r), Some("git push*"));
        let c = argv(&["bash", "-c", "kubectl delete pod x"]);
        assert_eq!(matching_rule(&c, &r), Some("kubectl delete*"));
    }

    #[test]
    fn commands_matching_no_rule_run_without_approval() {
        let r = rules();
        for c in [
            argv(&["git", "status"]),
            argv(&["echo", "git push"]),
            argv(&["rm", "-r", "x"]),
            argv(&["python3", "-c", "git push"]),
        ] {
            assert_eq!(gate(&literal(&c, &r)), None, "{c:?}");
        }
        assert_eq!(gate(&literal(&[], &r)), None);
    }

    #[test]
    fn the_first_gate_wins_step_then_profile_then_rule() {
        let (r, c) = (rules(), argv(&["git", "push"]));
        let g = Gate {
            asked: true,
            ..literal(&c, &r)
        };
        assert_eq!(gate(&g).as_deref(), Some(""));
        let g = Gate {
            agent: "deployer",
            profile_requires: true,
            command: &[],
            ..literal(&c, &r)
        };
        assert_eq!(
            gate(&g).as_deref(),
            Some("agent profile `deployer` requires approval")
        );
        let g = Gate {
            agent: "coder",
            command: &[],
            ..literal(&c, &r)
        };
        assert_eq!(gate(&g), None);
    }

    #[test]
    fn rules_are_checked_when_read() {
        assert!(check_rule("git push*").is_ok());
        let e = check_rule("git [push").unwrap_err();
        assert!(e.contains("`git [push` is not a glob pattern"), "{e}");
        assert!(check_rule(" ").is_err());
    }
}
