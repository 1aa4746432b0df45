//! A1111's prompt editing and alternation (`modules/prompt_parser.py`,
//! `get_learned_conditioning_prompt_schedules`): `[from:to:when]`, `[to:when]`,
//! `[from::when]` and `[a|b|c]` expand into a schedule of plain prompts, each with the last
//! step it conditions. `when` with a `.` is a fraction of the pass's steps, without one an
//! absolute step; a hires pass counts its own steps (fractions past 1.0, integers past the
//! first pass's steps). The plain prompts keep emphasis, `[x]` de-emphasis, escapes and
//! `BREAK` as written, for the text encoder.
//!
//! The grammar is A1111's lark grammar, read by recursive descent: a bracket that cannot be
//! read as a construct stays literal text, and a prompt lark cannot parse at all (a `|`
//! outside `[ ]`, a trailing `\`) is one segment, the prompt as written — as in A1111.
use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use crate::errors::echo;
use crate::limits::MAX_SCHEDULE_PROMPTS;

/// What a pass's schedule counts: its own steps (times the sampler's denoiser calls per
/// step), and for a hires pass the first pass's, which its absolute steps count past.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steps {
    /// A1111's `base_steps`: the first pass's steps × its sampler's step multiplier.
    pub base: usize,
    /// A1111's `hires_steps`: this pass's steps × its sampler's multiplier; `None` for the
    /// first pass.
    pub hires: Option<usize>,
}

/// One prompt's schedule: its distinct plain texts and, in order, the last denoiser call of
/// each segment with the text it conditions on (A1111's `ScheduledPromptConditioning`).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub texts: Vec<String>,
    /// `(end_at_step, index into texts)`, ascending; the last ends at the pass's steps.
    pub segments: Vec<(usize, usize)>,
}

impl Schedule {
    /// The text for denoiser call `call` (0-based), A1111's `reconstruct_cond_batch`: the
    /// first segment with `call <= end_at_step`, and the first segment when none is (a
    /// sampler making more calls than the schedule counts).
    pub fn index_at(&self, call: usize) -> usize {
        self.segments
            .iter()
            .find(|(end, _)| call <= *end)
            .or(self.segments.first())
            .map_or(0, |(_, i)| *i)
    }

    /// `[[end_at_step, text], ...]` as A1111 returns it.
    pub fn pairs(&self) -> Vec<(usize, &str)> {
        self.segments
            .iter()
            .map(|(end, i)| (*end, self.texts[*i].as_str()))
            .collect()
    }
}

/// Whether `prompt` might hold prompt editing or alternation: a `[` with a `:` or `|` after
/// it. A prompt without takes today's path unchanged (one conditioning for the pass).
pub fn may_schedule(prompt: &str) -> bool {
    match prompt.find('[') {
        Some(i) => prompt[i..].contains([':', '|']),
        None => false,
    }
}

/// The schedule of `prompt` for a pass counting `steps`, as A1111's
/// `get_learned_conditioning_prompt_schedules` makes it. Refused when it holds more than
/// [`MAX_SCHEDULE_PROMPTS`] different prompts, or a step past any number.
pub fn schedule(prompt: &str, steps: Steps) -> Result<Schedule> {
    let total = steps.hires.unwrap_or(steps.base);
    let single = |text: &str| Schedule {
        texts: vec![text.to_owned()],
        segments: vec![(total, 0)],
    };
    if !may_schedule(prompt) {
        return Ok(single(prompt));
    }
    let chars: Vec<char> = prompt.chars().collect();
    let Some(mut tree) = Parser::new(&chars).start() else {
        return Ok(single(prompt));
    };
    // CollectSteps: every edit's step (kept in the tree as A1111 does), and every step when
    // anything alternates.
    let mut ends = vec![total as i64];
    let mut periods = Vec::new();
    collect(&mut tree, steps, &mut ends, &mut periods)?;
    if !periods.is_empty() {
        ends.extend(1..=total as i64);
    }
    ends.sort_unstable();
    ends.dedup();
    // The text at a step is fixed by how many edit steps it is past and by each alternation's
    // phase: one key per segment bounds the distinct texts before any is built.
    let mut whens: Vec<i64> = Vec::new();
    edit_steps(&tree, &mut whens);
    whens.sort_unstable();
    whens.dedup();
    let cycle = periods
        .iter()
        .try_fold(1u64, |acc, &p| {
            let l = lcm(acc, p as u64);
            (l <= total as u64).then_some(l)
        })
        .unwrap_or(u64::MAX);
    let key = |step: i64| {
        let past = whens.partition_point(|&w| w < step);
        let phase = (step - 1).rem_euclid(cycle.min(i64::MAX as u64) as i64);
        (past, phase)
    };
    let keys: HashSet<(usize, i64)> = ends.iter().map(|&s| key(s)).collect();
    if keys.len() > MAX_SCHEDULE_PROMPTS {
        bail!(
            "prompt `{}` makes {} different prompts over {total} steps with its [from:to:when] and [a|b] (at most {MAX_SCHEDULE_PROMPTS}) — use fewer alternatives or edits",
            echo(prompt),
            keys.len()
        );
    }
    let mut by_key: HashMap<(usize, i64), usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    let mut segments = Vec::with_capacity(ends.len());
    for &step in &ends {
        let index = *by_key.entry(key(step)).or_insert_with(|| {
            let mut text = String::new();
            render(&tree, step, &mut text);
            match texts.iter().position(|t| *t == text) {
                Some(i) => i,
                None => {
                    texts.push(text);
                    texts.len() - 1
                }
            }
        });
        // A1111 keeps only steps >= 1 (and the pass's own), so every end is positive.
        segments.push((step.max(0) as usize, index));
    }
    Ok(Schedule { texts, segments })
}

/// The schedules' step count for a pass of `steps` steps run by `sampler`: A1111's
/// `SamplerData.total_steps`, twice the steps for its second-order samplers, whose every
/// step calls the denoiser twice (the schedule is indexed by the denoiser's call count).
pub fn total_steps(steps: usize, sampler: &str) -> usize {
    const SECOND_ORDER: [&str; 5] = [
        "heun",
        "dpm_2",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
    ];
    if SECOND_ORDER.contains(&sampler) {
        steps * 2
    } else {
        steps
    }
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    /// `[before:after:when]`; `when` is the number as written until [`collect`] sets `step`.
    Edit {
        before: Vec<Node>,
        after: Vec<Node>,
        when: String,
        step: i64,
    },
    Alternate(Vec<Vec<Node>>),
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if a == 0 || b == 0 {
        return 0;
    }
    (a / gcd(a, b)).saturating_mul(b)
}

/// A1111's `CollectSteps`: each edit's step, `min(steps, int(v))` with `v` a fraction of the
/// pass's steps when written with a `.` (past 1.0 in a hires pass), else a step (past the
/// first pass's steps in a hires pass); steps from 1 are schedule ends.
fn collect(
    nodes: &mut [Node],
    steps: Steps,
    ends: &mut Vec<i64>,
    periods: &mut Vec<usize>,
) -> Result<()> {
    let (int_offset, flt_offset, total) = match steps.hires {
        None => (0.0, 0.0, steps.base),
        Some(h) => (steps.base as f64, 1.0, h),
    };
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Edit {
                before,
                after,
                when,
                step,
            } => {
                collect(before, steps, ends, periods)?;
                collect(after, steps, ends, periods)?;
                let v: f64 = when.parse().unwrap_or(f64::NAN);
                let v = if when.contains('.') {
                    (v - flt_offset) * total as f64
                } else {
                    v - int_offset
                };
                if !v.is_finite() {
                    bail!(
                        "prompt edit step `{}` is past any number — write a fraction like 0.5 or a step like 10",
                        echo(when)
                    );
                }
                // Python's int() truncates toward zero; min(steps, ·) as A1111.
                *step = (total as f64).min(v.trunc()) as i64;
                if *step >= 1 {
                    ends.push(*step);
                }
            }
            Node::Alternate(options) => {
                periods.push(options.len());
                for option in options {
                    collect(option, steps, ends, periods)?;
                }
            }
        }
    }
    Ok(())
}

fn edit_steps(nodes: &[Node], out: &mut Vec<i64>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Edit {
                before,
                after,
                step,
                ..
            } => {
                out.push(*step);
                edit_steps(before, out);
                edit_steps(after, out);
            }
            Node::Alternate(options) => options.iter().for_each(|o| edit_steps(o, out)),
        }
    }
}

/// A1111's `AtStep`: the text at schedule step `step`.
fn render(nodes: &[Node], step: i64, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Edit {
                before,
                after,
                step: when,
                ..
            } => render(if step <= *when { before } else { after }, step, out),
            Node::Alternate(options) => {
                let i = (step - 1).rem_euclid(options.len() as i64) as usize;
                render(&options[i], step, out)
            }
        }
    }
}

/// Recursive descent over A1111's grammar:
///
/// ```text
/// start: (prompt | /[][():]/+)*
/// prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
/// emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
/// scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
/// alternate: "[" prompt ("|" [prompt])+ "]"
/// plain: /([^\\\[\]():|]|\\.)+/
/// ```
///
/// A construct at a position reads the same wherever it is reached from, so failures are
/// remembered by position: the work is linear in the prompt times its bracket depth.
struct Parser<'a> {
    s: &'a [char],
    failed: HashSet<usize>,
    depth: usize,
}

/// Deeper than this, a construct is not read (the profile's own bracket limit is lower).
const MAX_DEPTH: usize = 200;

impl<'a> Parser<'a> {
    fn new(s: &'a [char]) -> Self {
        Self {
            s,
            failed: HashSet::new(),
            depth: 0,
        }
    }

    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    /// `start`: prompts, with any bracket or colon no construct takes as literal text; `None`
    /// where lark fails (a `|` or a lone `\` no construct takes).
    fn start(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        let mut i = 0;
        loop {
            i = self.prompt(i, &mut nodes);
            match self.at(i) {
                None => return Some(nodes),
                Some(c @ ('[' | ']' | '(' | ')' | ':')) => {
                    push_text(&mut nodes, &c.to_string());
                    i += 1;
                }
                Some(_) => return None,
            }
        }
    }

    /// `prompt`: elements from `i` until a character none starts; returns where it stopped.
    fn prompt(&mut self, mut i: usize, nodes: &mut Vec<Node>) -> usize {
        let mut text = String::new();
        loop {
            match self.at(i) {
                None | Some(']' | ')' | ':' | '|') => break,
                Some('\\') => match self.at(i + 1) {
                    Some(c) if c != '\n' => {
                        text.push('\\');
                        text.push(c);
                        i += 2;
                    }
                    _ => break,
                },
                Some('[' | '(') => match self.element(i) {
                    Some((end, element)) => {
                        push_text(nodes, &std::mem::take(&mut text));
                        for n in element {
                            match n {
                                Node::Text(t) => push_text(nodes, &t),
                                other => nodes.push(other),
                            }
                        }
                        i = end;
                    }
                    None => break,
                },
                Some(c) => {
                    text.push(c);
                    i += 1;
                }
            }
        }
        push_text(nodes, &text);
        i
    }

    /// The construct opening at `i` (`(` or `[`), as nodes, and where it ends.
    fn element(&mut self, i: usize) -> Option<(usize, Vec<Node>)> {
        if self.failed.contains(&i) || self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let found = if self.at(i) == Some('(') {
            self.emphasis(i)
        } else {
            self.bracket(i)
        };
        self.depth -= 1;
        if found.is_none() {
            self.failed.insert(i);
        }
        found
    }

    fn emphasis(&mut self, i: usize) -> Option<(usize, Vec<Node>)> {
        let mut nodes = vec![Node::Text("(".into())];
        let mut j = self.prompt(i + 1, &mut nodes);
        if self.at(j) == Some(':') {
            nodes.push(Node::Text(":".into()));
            j = self.prompt(j + 1, &mut nodes);
        }
        (self.at(j) == Some(')')).then(|| {
            nodes.push(Node::Text(")".into()));
            (j + 1, nodes)
        })
    }

    fn bracket(&mut self, i: usize) -> Option<(usize, Vec<Node>)> {
        let mut first = Vec::new();
        let j = self.prompt(i + 1, &mut first);
        match self.at(j)? {
            ']' => {
                let mut nodes = vec![Node::Text("[".into())];
                nodes.extend(first);
                nodes.push(Node::Text("]".into()));
                Some((j + 1, nodes))
            }
            '|' => {
                let mut options = vec![first];
                let mut k = j;
                loop {
                    let mut option = Vec::new();
                    k = self.prompt(k + 1, &mut option);
                    options.push(option);
                    match self.at(k)? {
                        '|' => {}
                        ']' => return Some((k + 1, vec![Node::Alternate(options)])),
                        _ => return None,
                    }
                }
            }
            ':' => {
                // `[to:when]`, else `[from:to:when]`.
                if let Some((end, when)) = self.number_close(j + 1) {
                    let edit = Node::Edit {
                        before: Vec::new(),
                        after: first,
                        when,
                        step: 0,
                    };
                    return Some((end, vec![edit]));
                }
                let mut after = Vec::new();
                let k = self.prompt(j + 1, &mut after);
                if self.at(k) != Some(':') {
                    return None;
                }
                let (end, when) = self.number_close(k + 1)?;
                let edit = Node::Edit {
                    before: first,
                    after,
                    when,
                    step: 0,
                };
                Some((end, vec![edit]))
            }
            _ => None,
        }
    }

    /// `[WHITESPACE] NUMBER [WHITESPACE] "]"` from `i`: the number as written and the end.
    fn number_close(&self, mut i: usize) -> Option<(usize, String)> {
        let space = |c: Option<char>| c.is_some_and(char::is_whitespace);
        while space(self.at(i)) {
            i += 1;
        }
        let start = i;
        i = self.signed_number(i)?;
        let number: String = self.s[start..i].iter().collect();
        while space(self.at(i)) {
            i += 1;
        }
        (self.at(i) == Some(']')).then_some((i + 1, number))
    }

    /// lark's `SIGNED_NUMBER`: `[+-]? (INT | INT _EXP | INT "." INT? _EXP? | "." INT _EXP?)`,
    /// `_EXP: [eE] [+-]? INT`; returns where it ends.
    fn signed_number(&self, mut i: usize) -> Option<usize> {
        let digits = |mut i: usize| {
            let start = i;
            while self.at(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            (i, i > start)
        };
        if matches!(self.at(i), Some('+' | '-')) {
            i += 1;
        }
        let (mut j, int) = digits(i);
        let mut ok = int;
        if self.at(j) == Some('.') {
            let (k, frac) = digits(j + 1);
            if int || frac {
                j = k;
                ok = true;
            }
        }
        if !ok {
            return None;
        }
        if matches!(self.at(j), Some('e' | 'E')) {
            let mut k = j + 1;
            if matches!(self.at(k), Some('+' | '-')) {
                k += 1;
            }
            let (k, exp) = digits(k);
            if exp {
                j = k;
            }
        }
        Some(j)
    }
}

/// Appends text, merging it into a text node before it.
fn push_text(nodes: &mut Vec<Node>, text: &str) {
    if text.is_empty() {
        return;
    }
    match nodes.last_mut() {
        Some(Node::Text(t)) => t.push_str(text),
        _ => nodes.push(Node::Text(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(prompt: &str, steps: usize, hires: Option<usize>) -> Vec<(usize, String)> {
        schedule(prompt, Steps { base: steps, hires })
            .unwrap()
            .pairs()
            .into_iter()
            .map(|(s, t)| (s, t.to_owned()))
            .collect()
    }

    fn pairs(list: &[(usize, &str)]) -> Vec<(usize, String)> {
        list.iter().map(|(s, t)| (*s, t.to_string())).collect()
    }

    #[test]
    fn a1111_doctests() {
        assert_eq!(g("test", 10, None), pairs(&[(10, "test")]));
        assert_eq!(g("a [b:3]", 10, None), pairs(&[(3, "a "), (10, "a b")]));
        assert_eq!(
            g("a[b:[c:d:2]:1]e", 10, None),
            pairs(&[(1, "abe"), (2, "ace"), (10, "ade")])
        );
        assert_eq!(
            g("a [unbalanced", 10, None),
            pairs(&[(10, "a [unbalanced")])
        );
        assert_eq!(
            g("((a][:b:c [d:3]", 10, None),
            pairs(&[(3, "((a][:b:c "), (10, "((a][:b:c d")])
        );
        let fe = g("[fe|||]male", 10, None);
        assert_eq!(fe[0], (1, "female".into()));
        assert_eq!(fe[1], (2, "male".into()));
        assert_eq!(fe[4], (5, "female".into()));
        assert_eq!(g("a [b:.5] c", 10, Some(10)), pairs(&[(10, "a b c")]));
        assert_eq!(
            g("a [b:1.5] c", 10, Some(10)),
            pairs(&[(5, "a  c"), (10, "a b c")])
        );
    }

    /// Every record of `scripts/make_prompt_schedule_reference.py` (A1111's function run by
    /// lark over hand-picked and random prompts) equals our schedule.
    #[test]
    fn schedules_equal_the_a1111_transcription() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/prompt_schedule/reference.json"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let records = doc["records"].as_array().unwrap();
        assert!(records.len() > 1000, "{}", records.len());
        let (mut compared, mut multi, mut mismatches) = (0, 0, Vec::new());
        for r in records {
            if r["old"].as_bool().unwrap() {
                continue; // `use_old_scheduling`: not offered
            }
            let prompt = r["prompt"].as_str().unwrap();
            let steps = Steps {
                base: r["steps"].as_u64().unwrap() as usize,
                hires: r["hires_steps"].as_u64().map(|h| h as usize),
            };
            let got = schedule(prompt, steps);
            compared += 1;
            match (&r["schedule"], got) {
                (serde_json::Value::Null, Err(_)) => {}
                (serde_json::Value::Array(want), Ok(got)) => {
                    let want: Vec<(usize, String)> = want
                        .iter()
                        .map(|p| {
                            let p = p.as_array().unwrap();
                            (
                                p[0].as_u64().unwrap() as usize,
                                p[1].as_str().unwrap().into(),
                            )
                        })
                        .collect();
                    let got: Vec<(usize, String)> = got
                        .pairs()
                        .into_iter()
                        .map(|(s, t)| (s, t.to_owned()))
                        .collect();
                    multi += usize::from(want.len() > 1);
                    if got != want {
                        mismatches.push(format!("{prompt:?} {steps:?}: {got:?} != {want:?}"));
                    }
                }
                (want, got) => mismatches.push(format!("{prompt:?}: {got:?} vs {want}")),
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} of {compared}:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
        assert!(multi > 150, "{multi}");
    }

    #[test]
    fn calls_past_the_schedule_take_its_first_segment() {
        let s = schedule(
            "[red:blue:0.5]",
            Steps {
                base: 6,
                hires: None,
            },
        )
        .unwrap();
        let at: Vec<usize> = (0..8).map(|c| s.index_at(c)).collect();
        assert_eq!(at, [0, 0, 0, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn too_many_prompts_are_refused_before_any_is_built() {
        let prompt = "[a|b] [c|d|e] [f|g|h|i|j] [k|l|m|n|o|p|q]";
        let e = schedule(
            prompt,
            Steps {
                base: 300,
                hires: None,
            },
        )
        .unwrap_err();
        let line = e.to_string();
        assert!(line.contains("210 different prompts"), "{line}");
        assert!(
            line.contains(&format!("at most {MAX_SCHEDULE_PROMPTS}")),
            "{line}"
        );
        // the same prompt over fewer steps repeats fewer
        assert_eq!(
            schedule(
                prompt,
                Steps {
                    base: 20,
                    hires: None
                }
            )
            .unwrap()
            .texts
            .len(),
            20
        );
    }

    #[test]
    fn a_deep_or_long_prompt_parses_in_linear_time() {
        let prompt = format!("{}{}", "[a (b) ".repeat(2000), "x:y:0.5]".repeat(10));
        let s = schedule(
            &prompt,
            Steps {
                base: 20,
                hires: None,
            },
        )
        .unwrap();
        assert!(!s.texts.is_empty());
        let e = schedule(
            "a [b:c:1e999]",
            Steps {
                base: 20,
                hires: None,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("1e999"), "{e}");
    }
}
