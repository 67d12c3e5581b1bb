//! Figures of one target, the table that sets targets side by side with ratios, and the sanity
//! checks of the smoke run.

use std::fmt::Write as _;
use std::time::Duration;

use crate::drive::{ChatOutcome, Workload};

/// Everything measured of one target.
pub struct TargetResult {
    pub label: String,
    pub chats: usize,
    pub turns_done: usize,
    pub errors: Vec<String>,
    /// µs, sorted.
    pub burst: Vec<u32>,
    pub steady: Vec<u32>,
    pub steady_ack: Vec<u32>,
    pub steady_started: Vec<u32>,
    pub gaps: Vec<u32>,
    pub words: Vec<usize>,
    pub server_cpu: f64,
    pub client_cpu: f64,
    pub wall: Duration,
    pub rss_idle_kb: u64,
    pub rss_peak_kb: u64,
}

/// Nearest-rank percentile of sorted µs, in ms.
fn pct(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(f64::from(sorted[rank.min(sorted.len()) - 1]) / 1000.0)
}

impl TargetResult {
    #[allow(clippy::too_many_arguments)]
    pub fn from_outcomes(
        label: &str,
        work: &Workload,
        outcomes: Vec<ChatOutcome>,
        server_cpu: f64,
        client_cpu: f64,
        wall: Duration,
        rss_idle_kb: u64,
        rss_peak_kb: u64,
    ) -> TargetResult {
        let mut r = TargetResult {
            label: label.to_owned(),
            chats: work.chats,
            turns_done: 0,
            errors: Vec::new(),
            burst: Vec::new(),
            steady: Vec::new(),
            steady_ack: Vec::new(),
            steady_started: Vec::new(),
            gaps: Vec::new(),
            words: Vec::new(),
            server_cpu,
            client_cpu,
            wall,
            rss_idle_kb,
            rss_peak_kb,
        };
        for o in outcomes {
            r.turns_done += o.turns_done;
            r.burst.extend(o.burst_first_token);
            r.steady.extend(o.steady_first_token);
            r.steady_ack.extend(o.steady_ack);
            r.steady_started.extend(o.steady_started);
            r.gaps.extend(o.gaps);
            r.words.extend(o.words);
            r.errors.extend(o.error);
        }
        r.burst.sort_unstable();
        r.steady.sort_unstable();
        r.steady_ack.sort_unstable();
        r.steady_started.sort_unstable();
        r.gaps.sort_unstable();
        r
    }

    pub fn burst_ms(&self, p: f64) -> Option<f64> {
        pct(&self.burst, p)
    }

    pub fn steady_ms(&self, p: f64) -> Option<f64> {
        pct(&self.steady, p)
    }

    pub fn gap_ms(&self, p: f64) -> Option<f64> {
        pct(&self.gaps, p)
    }

    /// Server CPU seconds per 1,000 turns (connections included).
    pub fn cpu_per_1000(&self) -> Option<f64> {
        (self.turns_done > 0).then(|| self.server_cpu / self.turns_done as f64 * 1000.0)
    }

    /// The server's peak RSS during the run above its idle RSS, per chat.
    pub fn kb_per_stream(&self) -> Option<f64> {
        (self.chats > 0)
            .then(|| self.rss_peak_kb.saturating_sub(self.rss_idle_kb) as f64 / self.chats as f64)
    }

    /// What makes the figures of a smoke run not believable.
    pub fn sanity(&self, work: &Workload) -> Vec<String> {
        let mut problems: Vec<String> = self.errors.iter().take(3).cloned().collect();
        let asked = work.chats * work.turns;
        if self.turns_done != asked {
            problems.push(format!("{} of {asked} turns completed", self.turns_done));
        }
        let reply = Duration::from_secs_f64(work.tokens as f64 / work.rate);
        match (
            self.burst_ms(50.0),
            self.steady_ms(50.0),
            self.steady_ms(99.0),
        ) {
            (Some(b), Some(s50), Some(s99)) => {
                if !(0.0..2000.0).contains(&b) || !(0.0..1000.0).contains(&s50) || s99 < s50 {
                    problems.push(format!(
                        "first token: burst p50 {b} ms, steady p50 {s50} ms, p99 {s99} ms"
                    ));
                }
            }
            other => problems.push(format!("first-token figures missing: {other:?}")),
        }
        match self.gap_ms(50.0) {
            Some(g) if g > 0.0 && g < reply.as_secs_f64() * 1000.0 + 500.0 => {}
            other => problems.push(format!("inter-frame p50 {other:?} ms")),
        }
        match self.cpu_per_1000() {
            Some(c) if c > 0.0 && c < 1000.0 => {}
            other => problems.push(format!("CPU s per 1,000 turns {other:?}")),
        }
        match self.kb_per_stream() {
            Some(k) if k < 100_000.0 => {}
            other => problems.push(format!("KB per stream {other:?}")),
        }
        // Every reply is the fixed number of tokens, each at most one word.
        if let Some(bad) = self
            .words
            .iter()
            .find(|&&w| w == 0 || w > work.tokens || w < work.tokens / 2)
        {
            problems.push(format!("a reply of {bad} words for {} tokens", work.tokens));
        }
        problems
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) if v < 1000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.2} s", v / 1000.0),
        None => "-".into(),
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn ratio_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn show_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}x"),
        Some(r) => format!("{r:.2}x"),
        None => "-".into(),
    }
}

/// The median of the values present (the mean of the middle two for an even count), with the
/// smallest and the largest.
fn median_and_range(values: impl IntoIterator<Item = Option<f64>>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some((median, v[0], v[v.len() - 1]))
}

type Metric = (
    &'static str,
    fn(&TargetResult) -> Option<f64>,
    fn(Option<f64>) -> String,
);

const METRICS: &[Metric] = &[
    ("burst first token p50", |r| r.burst_ms(50.0), ms),
    ("burst first token p99", |r| r.burst_ms(99.0), ms),
    ("steady first token p50", |r| r.steady_ms(50.0), ms),
    ("steady first token p99", |r| r.steady_ms(99.0), ms),
    ("steady send to ack p50", |r| pct(&r.steady_ack, 50.0), ms),
    (
        "steady send to turn-started p50",
        |r| pct(&r.steady_started, 50.0),
        ms,
    ),
    ("inter-frame delay p99", |r| r.gap_ms(99.0), ms),
    ("CPU s per 1,000 turns", TargetResult::cpu_per_1000, num),
    ("KB RSS per stream", TargetResult::kb_per_stream, num),
];

/// One markdown table: a column per target, then each target against the floor and the Node
/// peer against each chatrun.
pub fn table(work: &Workload, results: &[TargetResult]) -> String {
    render(work, &[results])
}

/// The table of several rounds (`rounds[round][target]`, every round the same targets in the
/// same order): each figure's median over the rounds with its range, and each ratio's median
/// over the rounds, every round's ratio taken within that round.
pub fn rounds_table(work: &Workload, rounds: &[Vec<TargetResult>]) -> String {
    let rounds: Vec<&[TargetResult]> = rounds.iter().map(Vec::as_slice).collect();
    render(work, &rounds)
}

/// [`table`] for one round, [`rounds_table`] for several.
fn render(work: &Workload, rounds: &[&[TargetResult]]) -> String {
    let Some(first) = rounds.first() else {
        return String::new();
    };
    let one = rounds.len() == 1;
    let labels: Vec<&str> = first.iter().map(|r| r.label.as_str()).collect();
    let at = |label: &str| labels.iter().position(|l| *l == label);
    let (floor, node) = (at("floor"), at("node"));
    let measured: Vec<usize> = (0..labels.len())
        .filter(|&i| Some(i) != floor && Some(i) != node)
        .collect();
    // (name, numerator's index, denominator's index)
    let mut ratios: Vec<(String, usize, usize)> = Vec::new();
    if let Some(floor) = floor {
        for &i in measured.iter().chain(node.iter()) {
            ratios.push((format!("{} / floor", labels[i]), i, floor));
        }
    }
    if let Some(node) = node {
        for &i in &measured {
            ratios.push((format!("node / {}", labels[i]), node, i));
        }
    }
    let mut header = vec![String::new()];
    header.extend(labels.iter().map(|l| l.to_string()));
    header.extend(ratios.iter().map(|(name, _, _)| name.clone()));
    let mut out = String::new();
    let rounds_note = if one {
        String::new()
    } else {
        format!("; median of {} rounds (range)", rounds.len())
    };
    let _ = writeln!(
        out,
        "{} chats x {} turns, {} tokens per reply at {} tokens/s{rounds_note}\n",
        work.chats, work.turns, work.tokens, work.rate
    );
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for (name, get, show) in METRICS {
        let mut row = vec![name.to_string()];
        for i in 0..labels.len() {
            row.push(match median_and_range(rounds.iter().map(|r| get(&r[i]))) {
                Some((median, _, _)) if one => show(Some(median)),
                Some((median, low, high)) => format!(
                    "{} ({}-{})",
                    show(Some(median)),
                    show(Some(low)),
                    show(Some(high))
                ),
                None => show(None),
            });
        }
        for (_, a, b) in &ratios {
            let per_round = rounds.iter().map(|r| ratio_of(get(&r[*a]), get(&r[*b])));
            row.push(show_ratio(median_and_range(per_round).map(|(m, _, _)| m)));
        }
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let mut row = vec![if one {
        "turns done (errors)".to_owned()
    } else {
        "turns done (errors), all rounds".to_owned()
    }];
    for i in 0..labels.len() {
        let done: usize = rounds.iter().map(|r| r[i].turns_done).sum();
        let errors: usize = rounds.iter().map(|r| r[i].errors.len()).sum();
        row.push(format!("{done} ({errors})"));
    }
    row.extend(ratios.iter().map(|_| String::new()));
    let _ = writeln!(out, "| {} |", row.join(" | "));
    if one {
        let mut row = vec!["load generator CPU s / wall s".to_owned()];
        row.extend(
            first
                .iter()
                .map(|r| format!("{:.1} / {:.1}", r.client_cpu, r.wall.as_secs_f64())),
        );
        row.extend(ratios.iter().map(|_| String::new()));
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    for round in rounds {
        for r in round.iter() {
            for e in r.errors.iter().take(3) {
                let _ = writeln!(out, "\n{}: {e}", r.label);
            }
        }
    }
    out
}

/// The machine, for the record: CPU, cores, memory, kernel, load at the start.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GB", kb as f64 / 1e6));
    format!(
        "machine: {model}, {cores} cores, {mem} RAM, Linux {}, load average {}",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(label: &str, steady_ms: u32, server_cpu: f64) -> TargetResult {
        TargetResult {
            label: label.into(),
            chats: 10,
            turns_done: 1000,
            errors: Vec::new(),
            burst: vec![steady_ms * 1000],
            steady: vec![steady_ms * 1000],
            steady_ack: vec![steady_ms * 500],
            steady_started: vec![steady_ms * 800],
            gaps: vec![50_000],
            words: Vec::new(),
            server_cpu,
            client_cpu: 1.0,
            wall: Duration::from_secs(10),
            rss_idle_kb: 1000,
            rss_peak_kb: 1200,
        }
    }

    fn work() -> Workload {
        Workload {
            chats: 10,
            turns: 3,
            tokens: 85,
            rate: 30.0,
            think_max: Duration::from_millis(100),
            verify: false,
            frame_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn medians_of_figures_and_of_each_rounds_own_ratio() {
        // The floor drifts from round to round, and chatrun with it.
        let rounds = vec![
            vec![result("floor", 1, 1.0), result("chatrun", 3, 2.0)],
            vec![result("floor", 2, 2.0), result("chatrun", 4, 5.0)],
            vec![result("floor", 4, 3.0), result("chatrun", 6, 6.0)],
        ];
        let table = rounds_table(&work(), &rounds);
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| {name} |")))
                .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
                .to_owned()
        };
        assert!(table.contains("median of 3 rounds"), "{table}");
        assert_eq!(
            row("steady first token p50"),
            "| steady first token p50 | 2.00 ms (1.00 ms-4.00 ms) | 4.00 ms (3.00 ms-6.00 ms) | 2.00x |",
            "per-round ratios 3, 2 and 1.5: their median, not 4 / 2"
        );
        assert_eq!(
            row("CPU s per 1,000 turns"),
            "| CPU s per 1,000 turns | 2.00 (1.00-3.00) | 5.00 (2.00-6.00) | 2.00x |",
            "per-round ratios 2, 2.5 and 2"
        );
        assert!(row("turns done (errors), all rounds").contains("| 3000 (0) | 3000 (0) |"));
    }

    #[test]
    fn one_round_shows_its_figures_without_ranges() {
        let table = table(
            &work(),
            &[result("floor", 1, 1.0), result("chatrun", 3, 2.0)],
        );
        assert!(!table.contains("rounds"), "{table}");
        assert!(
            table.contains("| steady first token p50 | 1.00 ms | 3.00 ms | 3.00x |"),
            "{table}"
        );
        assert!(table.contains("| load generator CPU s / wall s | 1.0 / 10.0 | 1.0 / 10.0 |"));
    }

    #[test]
    fn an_even_count_of_rounds_takes_the_middle_twos_mean() {
        assert_eq!(
            median_and_range([Some(4.0), None, Some(1.0), Some(2.0), Some(10.0)]),
            Some((3.0, 1.0, 10.0))
        );
        assert_eq!(median_and_range([None, None]), None);
    }
}
