//! Admission on the host's state, as data: each row of `HOST_RULES` is a floor or a
//! ceiling from `[host]` that, when crossed, holds every new attempt back (ready steps
//! stay `ready`; running ones are left alone). The reading is an input: the actor reads
//! the host only while work waits for a slot, and again on a timer while it is held.

use orch_proto::units::HumanBytes;

/// The host's state as read for admission.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub available_memory: u64,
    /// The 1-minute load average.
    pub load_1m: f64,
}

/// The `[host]` admission settings; unset = no such rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Floors {
    pub min_available_memory: Option<u64>,
    pub max_load: Option<f64>,
}

impl Floors {
    /// Whether any rule is set (without one the host is never read for admission).
    pub fn any(&self) -> bool {
        self.min_available_memory.is_some() || self.max_load.is_some()
    }
}

/// One admission rule: when `holds` is true, no new attempt starts, for `why`.
struct Rule {
    holds: fn(&Reading, &Floors) -> bool,
    why: fn(&Reading, &Floors) -> String,
}

/// The rules, in the order their reasons are given.
const HOST_RULES: [Rule; 2] = [
    Rule {
        holds: |r, f| {
            f.min_available_memory
                .is_some_and(|m| r.available_memory < m)
        },
        why: |r, f| {
            format!(
                "available memory {} is below the floor of {} ([host] min_available_memory)",
                HumanBytes(r.available_memory),
                HumanBytes(f.min_available_memory.unwrap_or(0))
            )
        },
    },
    Rule {
        holds: |r, f| f.max_load.is_some_and(|m| r.load_1m > m),
        why: |r, f| {
            format!(
                "load {:.2} is above the ceiling of {} ([host] max_load)",
                r.load_1m,
                f.max_load.unwrap_or(0.0)
            )
        },
    },
];

/// Why new attempts must wait on this reading, every crossed rule in order; `None` when
/// they may start.
pub fn hold(r: &Reading, f: &Floors) -> Option<String> {
    let reasons: Vec<String> = HOST_RULES
        .iter()
        .filter(|rule| (rule.holds)(r, f))
        .map(|rule| (rule.why)(r, f))
        .collect();
    (!reasons.is_empty()).then(|| format!("held back: {}", reasons.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn reading(mem: u64, load: f64) -> Reading {
        Reading {
            available_memory: mem,
            load_1m: load,
        }
    }

    #[test]
    fn no_floors_admit_everything() {
        let f = Floors::default();
        assert!(!f.any());
        assert_eq!(hold(&reading(0, 1e9), &f), None);
    }

    #[test]
    fn the_memory_floor_holds_below_it_only() {
        let f = Floors {
            min_available_memory: Some(G),
            max_load: None,
        };
        assert_eq!(hold(&reading(G, 99.0), &f), None, "at the floor is enough");
        let why = hold(&reading(G - 1, 0.0), &f).unwrap_or_default();
        assert!(why.contains("available memory"), "{why}");
        assert!(why.contains("min_available_memory"), "{why}");
        assert!(
            why.contains("1.0G") || why.contains("1G") || why.contains("1024"),
            "{why}"
        );
    }

    #[test]
    fn the_load_ceiling_holds_above_it_only() {
        let f = Floors {
            min_available_memory: None,
            max_load: Some(4.0),
        };
        assert_eq!(hold(&reading(0, 4.0), &f), None, "at the ceiling is fine");
        let why = hold(&reading(0, 4.5), &f).unwrap_or_default();
        assert!(why.contains("load 4.50 is above the ceiling of 4"), "{why}");
    }

    #[test]
    fn every_crossed_rule_is_named_in_table_order() {
        let f = Floors {
            min_available_memory: Some(2 * G),
            max_load: Some(1.0),
        };
        let why = hold(&reading(G, 3.0), &f).unwrap_or_default();
        let (mem, load) = (why.find("memory"), why.find("load"));
        assert!(mem.is_some() && load.is_some() && mem < load, "{why}");
        assert!(why.starts_with("held back: "), "{why}");
    }
}
