//! A micro-benchmark of the decision's grant lookup, run by
//! `jitproxy debug bench-decision` (and `cargo xtask bench`): builds an index
//! of many grants and times lookups that hit and miss.

use std::{fmt, hint::black_box, time::Instant};

use crate::{
    access::{Grant, GrantIndex, Keys, Principal, Subject},
    time::now_ms,
};

/// Targets the synthetic grants spread over.
const TARGETS: u32 = 16;

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub grants: u32,
    pub lookups: u32,
    pub build_ms: f64,
    pub ns_per_hit: f64,
    pub ns_per_miss: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decision with {} grants: index built in {:.1} ms; lookup {:.0} ns (granted), {:.0} ns (no grant); {} lookups each",
            self.grants, self.build_ms, self.ns_per_hit, self.ns_per_miss, self.lookups
        )
    }
}

/// Builds `grants` grants (one user each, spread over targets, some users
/// with two overlapping grants) and times `lookups` lookups.
pub fn run(grants: u32, lookups: u32) -> Report {
    let now = now_ms();
    let all: Vec<Grant> = (0..grants)
        .map(|i| Grant {
            id: i64::from(i),
            // Every tenth user has a second, overlapping grant.
            subject: Subject::User(10_000 + if i % 10 == 9 { i - 1 } else { i }),
            subject_name: None,
            target: format!("t{}", i % TARGETS),
            starts_at: now - 60_000,
            ends_at: now + 3_600_000 + i64::from(i),
            reason: "bench".to_owned(),
            granted_by: Principal {
                uid: 0,
                name: None,
                login_uid: None,
            },
            created_at: now,
            ended: None,
            scopes: Vec::new(),
            request_id: None,
        })
        .collect();
    let started = Instant::now();
    let index = GrantIndex::build(&all, now, |name| name.strip_prefix('t')?.parse().ok());
    let build_ms = started.elapsed().as_secs_f64() * 1e3;

    let time = |hit: bool| {
        let started = Instant::now();
        for n in 0..lookups {
            // A hit asks for grant i's own subject and target; a miss for a
            // user that has no grant.
            let grant = &all[(n % grants.max(1)) as usize];
            let (Subject::User(uid) | Subject::Group(uid)) = grant.subject;
            let keys = Keys {
                uid: if hit { uid } else { uid + 2 * grants },
                gids: Vec::new(),
            };
            let target = n % grants.max(1) % TARGETS;
            black_box(index.cover(black_box(&keys), target, now));
        }
        started.elapsed().as_nanos() as f64 / f64::from(lookups.max(1))
    };
    Report {
        grants,
        lookups,
        build_ms,
        ns_per_hit: time(true),
        ns_per_miss: time(false),
    }
}
