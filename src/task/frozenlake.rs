//! FrozenLake as a text game (RAGEN's third seed task), with Gym's FrozenLake-v1 semantics: actions Left=0, Down=1, Right=2, Up=3; a move into the edge
//! stays put; slippery: the intended move or either perpendicular one, 1/3 each; reward 1 at
//! the goal, else 0; the episode ends at a hole, the goal, or the turn limit.
use super::env::{Environment, Episode, Outcome, Reference};
use super::reward::{Reason, RewardKind, Score};
use super::rewards::RewardParams;
use super::template::{Template, SYSTEM};
use super::{Problem, ProblemSpec, Task};
use crate::rng::{derive_seed, Rng};
use anyhow::{anyhow, bail, Result};
use std::collections::VecDeque;

pub const GYM_4X4: [&str; 4] = ["SFFF", "FHFH", "FFFH", "HFFG"];
pub const GYM_8X8: [&str; 8] = ["SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF", "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Left = 0,
    Down = 1,
    Right = 2,
    Up = 3,
}

pub const ACTIONS: [Action; 4] = [Action::Left, Action::Down, Action::Right, Action::Up];

impl Action {
    pub fn name(self) -> &'static str {
        ["Left", "Down", "Right", "Up"][self as usize]
    }
    /// The action a reply names in its last `<answer>…</answer>` (case-insensitive).
    pub fn parse(reply: &str) -> Option<Action> {
        Action::named(crate::task::reward::last_answer(reply)?)
    }
    fn named(a: &str) -> Option<Action> {
        ACTIONS.into_iter().find(|x| x.name().eq_ignore_ascii_case(a.trim()))
    }
    fn from_index(i: usize) -> Action {
        ACTIONS[i % 4]
    }
}

/// A parsed map: rows of S (start), F (frozen), H (hole), G (goal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    cells: Vec<u8>,
}

impl Grid {
    pub fn parse(map: &[String]) -> Result<Grid> {
        let rows = map.len();
        let cols = map.first().map_or(0, |r| r.len());
        if rows == 0 || cols == 0 {
            bail!("a FrozenLake map needs at least one row and one column");
        }
        if let Some((i, r)) = map.iter().enumerate().find(|(_, r)| r.len() != cols) {
            bail!("FrozenLake map row {i} has {} cells, row 0 has {cols}: the map must be rectangular", r.len());
        }
        let cells: Vec<u8> = map.iter().flat_map(|r| r.bytes()).collect();
        if let Some(&c) = cells.iter().find(|c| !b"SFHG".contains(c)) {
            bail!("FrozenLake map holds '{}': cells are S, F, H or G", c as char);
        }
        match cells.iter().filter(|&&c| c == b'S').count() {
            1 => {}
            n => bail!("a FrozenLake map needs exactly one start S, this one has {n}"),
        }
        if !cells.contains(&b'G') {
            bail!("a FrozenLake map needs a goal G");
        }
        Ok(Grid { rows, cols, cells })
    }

    pub fn cell(&self, at: usize) -> u8 {
        self.cells[at]
    }
    pub fn start(&self) -> usize {
        self.cells.iter().position(|&c| c == b'S').expect("parse checked the start")
    }

    /// Where `a` leads from `at` (the edge stops a move).
    pub fn moved(&self, at: usize, a: Action) -> usize {
        let (r, c) = (at / self.cols, at % self.cols);
        let (r, c) = match a {
            Action::Left => (r, c.saturating_sub(1)),
            Action::Down => ((r + 1).min(self.rows - 1), c),
            Action::Right => (r, (c + 1).min(self.cols - 1)),
            Action::Up => (r.saturating_sub(1), c),
        };
        r * self.cols + c
    }

    /// Moves to the nearest goal from each cell avoiding holes (BFS), `None` where none.
    pub fn distances(&self) -> Vec<Option<u32>> {
        let n = self.cells.len();
        let mut d = vec![None; n];
        let mut q = VecDeque::new();
        for (i, &c) in self.cells.iter().enumerate() {
            if c == b'G' {
                d[i] = Some(0);
                q.push_back(i);
            }
        }
        // Reverse BFS: cell u reaches v in one move when moved(u, a) == v.
        while let Some(v) = q.pop_front() {
            let dv = d[v].expect("queued cells have a distance");
            for u in self.neighbours(v) {
                if d[u].is_none() && self.cells[u] != b'H' && self.cells[u] != b'G' && ACTIONS.iter().any(|&a| self.moved(u, a) == v) {
                    d[u] = Some(dv + 1);
                    q.push_back(u);
                }
            }
        }
        d
    }

    fn neighbours(&self, at: usize) -> impl Iterator<Item = usize> + '_ {
        ACTIONS.into_iter().map(move |a| self.moved(at, a)).filter(move |&u| u != at)
    }

    pub fn solvable(&self) -> bool {
        self.distances()[self.start()].is_some()
    }

    /// The first action (in Gym's order) that shortens the way to the goal. The demonstrations
    /// keep this fixed tie-break: breaking ties at random left the tiny preset's SFT base with
    /// no grid-reading at all (always Right, 0% held-out), where Gym's order gives a Down-first
    /// policy that solves half the maps.
    pub fn optimal_action(&self, at: usize, d: &[Option<u32>]) -> Option<Action> {
        let here = d[at]?;
        ACTIONS.into_iter().find(|&a| d[self.moved(at, a)] == Some(here.wrapping_sub(1)))
    }

    /// The grid as text, cells separated by spaces (so a BPE keeps one token per cell), the
    /// player's cell shown as P.
    pub fn render(&self, player: usize) -> String {
        let mut s = String::new();
        for r in 0..self.rows {
            for c in 0..self.cols {
                let i = r * self.cols + c;
                s.push(' ');
                s.push(if i == player { 'P' } else { self.cells[i] as char });
            }
            s.push('\n');
        }
        s
    }
}

/// Gym's `generate_random_map`: each cell frozen with probability 1 − `hole_prob`, S top left,
/// G bottom right, redrawn until a path exists.
pub fn random_map(size: usize, hole_prob: f64, rng: &mut Rng) -> Result<Vec<String>> {
    if size < 2 {
        bail!("random FrozenLake maps need a size of at least 2");
    }
    if !(0.0..1.0).contains(&hole_prob) {
        bail!("hole probability {hole_prob} must be in [0, 1)");
    }
    for _ in 0..100_000 {
        let mut cells: Vec<u8> = (0..size * size).map(|_| if rng.next_f64() < hole_prob { b'H' } else { b'F' }).collect();
        cells[0] = b'S';
        cells[size * size - 1] = b'G';
        let map: Vec<String> = cells.chunks(size).map(|r| String::from_utf8(r.to_vec()).expect("ascii")).collect();
        if Grid::parse(&map)?.solvable() {
            return Ok(map);
        }
    }
    bail!("no solvable {size}x{size} map in 100000 draws at hole probability {hole_prob}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Goal,
    Hole,
    OutOfTurns,
}

/// One episode's state: the player's cell, turns taken, invalid replies, the return so far.
pub struct Walk {
    pub grid: Grid,
    pub at: usize,
    pub turns: u32,
    pub max_turns: u32,
    pub invalid: u32,
    pub ret: f32,
    pub status: Status,
    slippery: bool,
    rng: Rng,
}

impl Walk {
    pub fn new(grid: Grid, slippery: bool, max_turns: u32, seed: u64) -> Walk {
        let at = grid.start();
        Walk { grid, at, turns: 0, max_turns, invalid: 0, ret: 0.0, status: Status::Running, slippery, rng: Rng::new(seed) }
    }

    /// One turn: `action` (None: the reply named no move — it counts as a turn and costs
    /// `invalid_penalty`). Returns the turn's reward.
    pub fn step(&mut self, action: Option<Action>, invalid_penalty: f32) -> f32 {
        debug_assert_eq!(self.status, Status::Running);
        self.turns += 1;
        let mut r = 0.0;
        match action {
            None => {
                self.invalid += 1;
                r -= invalid_penalty;
            }
            Some(a) => {
                let a = if self.slippery { Action::from_index(a as usize + 3 + self.rng.below(3) as usize) } else { a };
                self.at = self.grid.moved(self.at, a);
                match self.grid.cell(self.at) {
                    b'G' => {
                        r += 1.0;
                        self.status = Status::Goal;
                    }
                    b'H' => self.status = Status::Hole,
                    _ => {}
                }
            }
        }
        if self.status == Status::Running && self.turns >= self.max_turns {
            self.status = Status::OutOfTurns;
        }
        self.ret += r;
        r
    }
}

/// One FrozenLake problem: a map (rows of S, F, H, G), whether the ice is slippery, the
/// turn limit, and the seed its episodes' slips are drawn from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Lake {
    pub map: Vec<String>,
    #[serde(default)]
    pub slippery: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_max_turns")]
    pub max_turns: u32,
}

fn default_max_turns() -> u32 {
    10
}

/// `[task.frozenlake]`: how a run's maps are drawn and its episodes played.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeSpec {
    /// Sizes of random square maps (each problem draws one), 2..=12.
    pub sizes: Vec<usize>,
    /// Chance that a cell of a random map is a hole (Gym's `generate_random_map(p=0.8)`: 0.2).
    pub hole_prob: f64,
    /// Gym's `is_slippery`: the intended move or either perpendicular one, 1/3 each.
    pub slippery: bool,
    /// Turns per episode (each reply is one, valid or not).
    pub max_turns: u32,
    /// The return lost for each reply that names no action.
    pub invalid_penalty: f32,
    /// Tokens per reply; a longer reply ends its turn (and usually names no action).
    pub reply_tokens: usize,
    /// One fixed map for every problem instead of random ones: rows of S, F, H and G, or
    /// `["4x4"]` / `["8x8"]` for Gym's default maps.
    pub map: Vec<String>,
}

impl Default for LakeSpec {
    fn default() -> Self {
        LakeSpec { sizes: vec![4], hole_prob: 0.2, slippery: false, max_turns: 10, invalid_penalty: 0.1, reply_tokens: 16, map: vec![] }
    }
}

impl LakeSpec {
    /// The fixed map, if any (Gym's maps by name), checked.
    pub fn fixed_map(&self) -> Result<Option<Vec<String>>> {
        self.fixed_map_named(&config_key)
    }

    fn fixed_map_named(&self, key: &dyn Fn(&str) -> String) -> Result<Option<Vec<String>>> {
        let rows: Vec<String> = match self.map.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => return Ok(None),
            ["4x4"] => GYM_4X4.iter().map(|r| r.to_string()).collect(),
            ["8x8"] => GYM_8X8.iter().map(|r| r.to_string()).collect(),
            _ => self.map.clone(),
        };
        let g = Grid::parse(&rows).map_err(|e| anyhow!("{}: {e}", key("map")))?;
        if !g.solvable() {
            bail!("{}: no path leads from S to G around the holes", key("map"));
        }
        Ok(Some(rows))
    }

    /// Every setting in range, as a one-line error naming the config key.
    pub fn validate(&self) -> Result<()> {
        self.validate_named(&config_key)
    }

    /// Every setting in range, as a one-line error naming the setting as `key(field)` calls
    /// it (a command's flags, say).
    pub fn validate_named(&self, key: &dyn Fn(&str) -> String) -> Result<()> {
        if self.sizes.is_empty() || self.sizes.iter().any(|s| !(2..=12).contains(s)) {
            bail!("{} must name map sizes between 2 and 12", key("sizes"));
        }
        if !(0.0..0.9).contains(&self.hole_prob) {
            bail!("{} must lie in [0, 0.9)", key("hole_prob"));
        }
        if !(1..=100).contains(&self.max_turns) {
            bail!("{} must lie in 1..=100", key("max_turns"));
        }
        if !self.invalid_penalty.is_finite() || self.invalid_penalty < 0.0 {
            bail!("{} must be a finite number ≥ 0", key("invalid_penalty"));
        }
        if self.reply_tokens == 0 {
            bail!("{} must be at least 1", key("reply_tokens"));
        }
        self.fixed_map_named(key)?;
        Ok(())
    }
}

/// A `LakeSpec` field's name in a config file.
fn config_key(field: &str) -> String {
    format!("task.frozenlake.{field}")
}

/// The problem's lake (problems reach this task through `Problem::task`).
fn lake(p: &Problem) -> &Lake {
    match p {
        Problem::FrozenLake(l) => l,
        other => panic!("FrozenLake task given {other:?}"),
    }
}

fn grid(l: &Lake) -> Grid {
    // Problems are checked where they are made (`generate`, `parse`).
    Grid::parse(&l.map).expect("a checked map")
}

/// `n` seeded lakes from `spec`.
pub fn generate_lakes(n: usize, seed: u64, spec: &LakeSpec) -> Result<Vec<Problem>> {
    spec.validate()?;
    let fixed = spec.fixed_map()?;
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let map = match &fixed {
                Some(m) => m.clone(),
                None => random_map(spec.sizes[rng.below(spec.sizes.len() as u64) as usize], spec.hole_prob, &mut rng)?,
            };
            Ok(Problem::FrozenLake(Lake {
                map,
                slippery: spec.slippery,
                seed: derive_seed(seed, 0x1a4e, i as u64),
                max_turns: spec.max_turns,
            }))
        })
        .collect()
}

const MOVES: &str = "Left, Down, Right or Up";

/// The text the model sees after a turn: a note on an invalid reply, then the grid.
fn observation(template: Template, g: &Grid, at: usize, invalid: bool) -> String {
    let note = if invalid { format!("That reply named no move; answer {MOVES}.\n") } else { String::new() };
    let grid = g.render(at);
    match template {
        Template::Compact => format!("\n{note}{grid}"),
        Template::Base => format!("\nUser: {note}The lake now:\n{grid}Your next move ({MOVES})?\nAssistant: <think>"),
        Template::QwenInstruct => format!(
            "<|im_end|>\n<|im_start|>user\n{note}The lake now:\n{grid}Your next move ({MOVES})?<|im_end|>\n<|im_start|>assistant\n<think>"
        ),
    }
}

fn first_prompt(template: Template, g: &Grid) -> String {
    let grid = g.render(g.start());
    let rules = format!(
        "You are P on a frozen lake. Reach the goal G without falling into a hole H; S is the start, F is frozen ice. The lake:\n{grid}Each turn, answer one move: {MOVES}."
    );
    match template {
        Template::Compact => format!("FrozenLake: take P to G, avoid H. Moves: {MOVES}.\n{grid}"),
        Template::Base => format!(
            "{SYSTEM}\nUser: {rules} Show your work in <think> </think> tags and return the move in <answer> </answer> tags, for example <answer> Left </answer>.\nAssistant: Let me solve this step by step.\n<think>"
        ),
        Template::QwenInstruct => format!(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{rules} Show your work in <think> </think> tags and return the move in <answer> </answer> tags, for example <answer> Left </answer>.<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>"
        ),
    }
}

/// The agent's reply naming `a`, in the template's format.
fn reply(template: Template, a: Action) -> String {
    match template {
        Template::Compact => format!("<answer>{}</answer>", a.name()),
        Template::Base | Template::QwenInstruct => format!(" I move {}. </think>\n<answer> {} </answer>", a.name(), a.name()),
    }
}

/// An episode's outcome as a score: the return, and why it ended.
fn outcome(w: &Walk) -> Outcome {
    let reason = match w.status {
        Status::Goal => Reason::Correct,
        Status::Hole => Reason::Hole,
        _ if w.invalid == w.turns => Reason::NoAnswer,
        // Out of turns, or out of response tokens with the episode still going.
        _ => Reason::TurnLimit,
    };
    Outcome { score: Score { score: w.ret, reason }, turns: w.turns, invalid: w.invalid }
}

fn walk(l: &Lake, seed: u64) -> Walk {
    Walk::new(grid(l), l.slippery, l.max_turns, seed)
}

/// The seed of a problem's episode under stream `seed` (the task's own check uses the
/// problem's seed alone).
fn episode_seed(l: &Lake, seed: u64) -> u64 {
    derive_seed(l.seed, 0xe915, seed)
}

struct LakeEpisode {
    walk: Walk,
    template: Template,
    invalid_penalty: f32,
}

impl Episode for LakeEpisode {
    fn step(&mut self, reply: &str) -> Option<String> {
        if self.walk.status != Status::Running {
            return None;
        }
        let a = Action::parse(reply);
        self.walk.step(a, self.invalid_penalty);
        (self.walk.status == Status::Running).then(|| observation(self.template, &self.walk.grid, self.walk.at, a.is_none()))
    }
    fn outcome(&self) -> Outcome {
        outcome(&self.walk)
    }
}

/// Plays `l` with `choose(walk, distances, rng)` picking each move; returns the walk and the
/// moves made.
fn play(l: &Lake, seed: u64, penalty: f32, mut choose: impl FnMut(&Walk, &[Option<u32>], &mut Rng) -> Action) -> (Walk, Vec<Action>) {
    let mut w = walk(l, episode_seed(l, seed));
    let d = w.grid.distances();
    let mut rng = Rng::new(derive_seed(seed, 0x9a11, l.seed));
    let mut moves = vec![];
    while w.status == Status::Running {
        let a = choose(&w, &d, &mut rng);
        moves.push(a);
        w.step(Some(a), penalty);
    }
    (w, moves)
}

/// The BFS move from the walk's cell (any move where no way to the goal is left).
fn optimal(w: &Walk, d: &[Option<u32>]) -> Action {
    w.grid.optimal_action(w.at, d).unwrap_or(Action::Left)
}

pub struct FrozenLake;

impl Environment for FrozenLake {
    fn reset(&self, p: &Problem, template: Template, seed: u64, params: &RewardParams) -> Box<dyn Episode> {
        let l = lake(p);
        Box::new(LakeEpisode { walk: walk(l, episode_seed(l, seed)), template, invalid_penalty: params.invalid_move_penalty })
    }

    fn reference(&self, p: &Problem, policy: Reference, seed: u64, params: &RewardParams) -> Outcome {
        let (w, _) = play(lake(p), seed, params.invalid_move_penalty, |w, d, rng| match policy {
            Reference::Optimal => optimal(w, d),
            Reference::Random => Action::from_index(rng.below(4) as usize),
        });
        outcome(&w)
    }

    fn demonstration(&self, p: &Problem, template: Template, seed: u64, random_moves: f32) -> Vec<(String, bool)> {
        let l = lake(p);
        let mut segments = vec![];
        let mut w = walk(l, episode_seed(l, seed));
        let d = w.grid.distances();
        let mut rng = Rng::new(derive_seed(seed, 0xde40, l.seed));
        while w.status == Status::Running {
            let a = if rng.next_f64() < random_moves as f64 { Action::from_index(rng.below(4) as usize) } else { optimal(&w, &d) };
            segments.push((reply(template, a), true));
            w.step(Some(a), 0.0);
            if w.status == Status::Running {
                segments.push((observation(template, &w.grid, w.at, false), false));
            }
        }
        segments
    }
}

/// Labels for evaluation groups, by map size.
const SIZE_LABELS: [&str; 13] = ["0x0", "1x1", "2x2", "3x3", "4x4", "5x5", "6x6", "7x7", "8x8", "9x9", "10x10", "11x11", "12x12"];

impl Task for FrozenLake {
    fn name(&self) -> &'static str {
        "frozenlake"
    }

    fn generate(&self, n: usize, seed: u64, spec: &ProblemSpec) -> Result<Vec<Problem>> {
        generate_lakes(n, seed, &spec.lake)
    }

    fn parse(&self, v: &serde_json::Value) -> Option<Result<Problem>> {
        v.get("map")?;
        Some((|| {
            let l: Lake = serde_json::from_value(v.clone()).map_err(|e| anyhow!("a FrozenLake record: {e}"))?;
            let g = Grid::parse(&l.map)?;
            if !g.solvable() {
                bail!("FrozenLake map {:?}: no path leads from S to G", l.map);
            }
            if !(1..=100).contains(&l.max_turns) {
                bail!("FrozenLake max_turns {} must lie in 1..=100", l.max_turns);
            }
            Ok(Problem::FrozenLake(l))
        })())
    }

    fn record_shape(&self) -> &'static str {
        "{\"map\":[\"SFFF\",...],\"slippery\":false,\"seed\":S,\"max_turns\":T}"
    }

    fn prompt(&self, p: &Problem, t: Template) -> String {
        first_prompt(t, &grid(lake(p)))
    }

    /// Replays the moves the response's answers name, in order, with the problem's seed.
    fn score(&self, p: &Problem, response: &str, kind: RewardKind) -> Score {
        let l = lake(p);
        let mut w = walk(l, episode_seed(l, 0));
        for a in super::reward::answers(response) {
            if w.status != Status::Running {
                break;
            }
            w.step(Action::named(a), RewardParams::default().invalid_move_penalty);
        }
        let mut s = outcome(&w).score;
        if kind == RewardKind::Binary {
            s.score = if s.solved() { 1.0 } else { 0.0 };
        }
        s
    }

    fn sft_response(&self, _p: &Problem, _t: Template) -> Option<String> {
        None
    }

    fn difficulty(&self, p: &Problem) -> &'static str {
        let l = lake(p);
        let (r, c) = (l.map.len(), l.map.first().map_or(0, |r| r.len()));
        if r == c && r < SIZE_LABELS.len() {
            SIZE_LABELS[r]
        } else {
            "other size"
        }
    }

    fn identity(&self, p: &Problem) -> String {
        lake(p).map.join("/")
    }

    fn environment(&self) -> Option<&'static dyn Environment> {
        Some(&FrozenLake)
    }
}

/// The reference policies' outcome, for the commands that report them.
pub fn reference_outcome(p: &Problem, policy: Reference, seed: u64) -> Outcome {
    FrozenLake.reference(p, policy, seed, &RewardParams::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(m: &[&str]) -> Vec<String> {
        m.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn gym_maps_parse_and_bfs_distances_match_by_hand() {
        let g = Grid::parse(&rows(&GYM_4X4)).unwrap();
        let d = g.distances();
        // S at 0: the shortest path around the holes of Gym's 4x4 map is 6 moves.
        assert_eq!(d[g.start()], Some(6));
        assert_eq!(d[15], Some(0));
        assert_eq!(d[5], None, "a hole has no distance");
        assert!(Grid::parse(&rows(&GYM_8X8)).unwrap().solvable());
    }

    #[test]
    fn bad_maps_are_one_line_errors() {
        for (m, want) in [
            (rows(&["SFF", "FG"]), "rectangular"),
            (rows(&["SFX", "FFG"]), "cells are S, F, H or G"),
            (rows(&["FFF", "FFG"]), "exactly one start"),
            (rows(&["SFF", "FFF"]), "needs a goal"),
        ] {
            let e = Grid::parse(&m).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let spec = LakeSpec { map: rows(&["SH", "HG"]), ..LakeSpec::default() };
        assert!(spec.validate().unwrap_err().to_string().contains("no path"));
    }

    #[test]
    fn moves_follow_gym_edges_holes_and_goal() {
        let g = Grid::parse(&rows(&GYM_4X4)).unwrap();
        assert_eq!(g.moved(0, Action::Left), 0);
        assert_eq!(g.moved(0, Action::Up), 0);
        assert_eq!(g.moved(0, Action::Right), 1);
        assert_eq!(g.moved(0, Action::Down), 4);
        let mut w = Walk::new(g.clone(), false, 10, 0);
        w.step(Some(Action::Right), 0.1);
        w.step(Some(Action::Down), 0.1);
        assert_eq!(w.status, Status::Hole);
        assert_eq!(w.ret, 0.0);
        let mut w = Walk::new(g, false, 3, 0);
        for _ in 0..3 {
            w.step(None, 0.1);
        }
        assert_eq!(w.status, Status::OutOfTurns);
        assert!((w.ret + 0.3).abs() < 1e-6);
        assert_eq!(outcome(&w).score.reason, Reason::NoAnswer);
    }

    #[test]
    fn slippery_moves_split_a_third_each_over_the_intended_and_perpendicular() {
        let g = Grid::parse(&rows(&["FFF", "FSF", "FFG"])).unwrap();
        let mut seen = [0usize; 9];
        for seed in 0..3000 {
            let mut w = Walk::new(g.clone(), true, 10, seed);
            w.step(Some(Action::Down), 0.0);
            seen[w.at] += 1;
        }
        // Down from the centre lands below, left or right — never up or in place.
        assert_eq!(seen[1] + seen[4], 0);
        for cell in [3, 5, 7] {
            assert!((900..1100).contains(&seen[cell]), "{seen:?}");
        }
    }

    #[test]
    fn random_maps_are_solvable_and_seeded() {
        let spec = LakeSpec { sizes: vec![4, 8], ..LakeSpec::default() };
        let a = generate_lakes(50, 7, &spec).unwrap();
        assert_eq!(a, generate_lakes(50, 7, &spec).unwrap());
        for p in &a {
            assert!(grid(lake(p)).solvable());
        }
        assert!(a.iter().any(|p| lake(p).map.len() == 8) && a.iter().any(|p| lake(p).map.len() == 4));
    }

    #[test]
    fn optimal_policy_solves_every_non_slippery_map_and_random_does_worse() {
        let lakes = generate_lakes(100, 3, &LakeSpec { max_turns: 30, ..LakeSpec::default() }).unwrap();
        let solved = |r: Reference| lakes.iter().filter(|p| reference_outcome(p, r, 1).score.solved()).count();
        assert_eq!(solved(Reference::Optimal), 100);
        assert!(solved(Reference::Random) < 60, "{}", solved(Reference::Random));
    }

    #[test]
    fn replies_parse_case_insensitively_and_junk_is_an_invalid_turn() {
        assert_eq!(Action::parse("<answer> right </answer>"), Some(Action::Right));
        assert_eq!(Action::parse("<think>x</think><answer>UP</answer>"), Some(Action::Up));
        assert_eq!(Action::parse("<answer>north</answer>"), None);
        assert_eq!(Action::parse("Left"), None);
        let p = Problem::FrozenLake(Lake { map: rows(&GYM_4X4), slippery: false, seed: 0, max_turns: 10 });
        let mut e = FrozenLake.reset(&p, Template::Compact, 0, &RewardParams::default());
        let obs = e.step("<answer>sideways</answer>").unwrap();
        assert!(obs.contains("named no move") && obs.contains(" P F F F"), "{obs}");
        assert_eq!(e.outcome().invalid, 1);
    }

    #[test]
    fn the_demonstration_replayed_by_the_task_check_reaches_the_goal() {
        let lakes = generate_lakes(20, 5, &LakeSpec::default()).unwrap();
        for p in &lakes {
            for t in [Template::Compact, Template::Base, Template::QwenInstruct] {
                let demo = FrozenLake.demonstration(p, t, 0, 0.0);
                assert!(demo[0].1 && demo.last().unwrap().1);
                let text: String = demo.iter().map(|(s, _)| s.as_str()).collect();
                assert!(FrozenLake.score(p, &text, RewardKind::Tinyzero).solved(), "{text}");
            }
        }
    }

    #[test]
    fn records_parse_with_defaults_and_bad_maps_are_errors() {
        let v = serde_json::json!({"map": ["SF", "FG"], "extra": 1});
        let p = FrozenLake.parse(&v).unwrap().unwrap();
        assert_eq!(p, Problem::FrozenLake(Lake { map: rows(&["SF", "FG"]), slippery: false, seed: 0, max_turns: 10 }));
        assert!(FrozenLake.parse(&serde_json::json!({"map": ["SH", "HG"]})).unwrap().is_err());
        assert!(FrozenLake.parse(&serde_json::json!({"a": 1})).is_none());
        assert_eq!(FrozenLake.difficulty(&p), "2x2");
    }
}
