//! Exhaustive Countdown solver: repeatedly combine two of the remaining values with + − × ÷
//! (exact rational arithmetic), until one value is left. Returns one equation using every
//! number exactly once, or None.

#[derive(Clone, Copy, PartialEq, Eq)]
struct Q {
    n: i128,
    d: i128,
}

impl Q {
    fn new(n: i128, d: i128) -> Option<Q> {
        if d == 0 {
            return None;
        }
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1) as i128;
        let s = if d < 0 { -1 } else { 1 };
        Some(Q { n: s * n / g, d: s * d / g })
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The value of `a op b`, or None (division by zero, i128 overflow).
fn combine(a: Q, b: Q, op: char) -> Option<Q> {
    match op {
        '+' => a.n.checked_mul(b.d).and_then(|x| x.checked_add(b.n.checked_mul(a.d)?)).and_then(|x| Q::new(x, a.d * b.d)),
        '*' => a.n.checked_mul(b.n).and_then(|x| Q::new(x, a.d.checked_mul(b.d)?)),
        '-' => a.n.checked_mul(b.d).and_then(|x| x.checked_sub(b.n.checked_mul(a.d)?)).and_then(|x| Q::new(x, a.d * b.d)),
        _ if b.n == 0 => None,
        _ => a.n.checked_mul(b.d).and_then(|x| Q::new(x, a.d.checked_mul(b.n)?)),
    }
}

/// The operators tried for the ordered pair (i, j), in search order: + and × commute, so they
/// are tried once per unordered pair (i < j).
fn ops(i: usize, j: usize) -> &'static [char] {
    if i < j {
        &['+', '*', '-', '/']
    } else {
        &['-', '/']
    }
}

/// Depth-first search over values only: combine the ordered pair (i, j) of the remaining values
/// with each operator, the rest keeping their order and the result appended last. On success
/// `path` holds the (i, j, op) taken at each level, root first. Why no text here: formatting
/// an expression at every node was most of the time of generating Countdown problems (an
/// unsolvable instance is searched exhaustively); the text of the one solution is rebuilt from
/// the path (`replay`), so the equation found is the one a text-building search finds first.
fn search(vals: &[Q], target: Q, depth_budget: &mut u64, path: &mut Vec<(usize, usize, char)>) -> bool {
    let n = vals.len();
    if n == 1 {
        return vals[0] == target;
    }
    if *depth_budget == 0 {
        return false;
    }
    *depth_budget -= 1;
    let mut rest = [Q { n: 0, d: 1 }; 6];
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let mut m = 0;
            for (k, &v) in vals.iter().enumerate() {
                if k != i && k != j {
                    rest[m] = v;
                    m += 1;
                }
            }
            for &op in ops(i, j) {
                let Some(v) = combine(vals[i], vals[j], op) else { continue };
                rest[m] = v;
                path.push((i, j, op));
                if search(&rest[..m + 1], target, depth_budget, path) {
                    return true;
                }
                path.pop();
            }
        }
    }
    false
}

/// An expression under construction: its text, and whether it needs parentheses as an operand.
struct Expr {
    text: String,
    compound: bool,
}

fn operand(e: &Expr) -> String {
    if e.compound {
        format!("({})", e.text)
    } else {
        e.text.clone()
    }
}

/// The equation of a successful search path over `nums` (spaces around operators, parentheses
/// around compound operands).
fn replay(nums: &[i64], path: &[(usize, usize, char)]) -> String {
    let mut items: Vec<Expr> = nums.iter().map(|x| Expr { text: x.to_string(), compound: false }).collect();
    for &(i, j, op) in path {
        let text = format!("{} {op} {}", operand(&items[i]), operand(&items[j]));
        let mut rest: Vec<Expr> = items.into_iter().enumerate().filter(|(k, _)| *k != i && *k != j).map(|(_, e)| e).collect();
        rest.push(Expr { text, compound: true });
        items = rest;
    }
    items.pop().map(|e| e.text).unwrap_or_default()
}

/// One equation (spaces around operators, parentheses where needed) that uses every number
/// once and equals `target`, or None. Searches at most a few million nodes.
pub fn solve_countdown(nums: &[i64], target: i64) -> Option<String> {
    if nums.is_empty() || nums.len() > 6 {
        return None;
    }
    if nums.iter().any(|&x| x < 0) {
        return None;
    }
    let vals: Vec<Q> = nums.iter().map(|&x| Q { n: x as i128, d: 1 }).collect();
    let mut budget = 5_000_000u64;
    let mut path = Vec::with_capacity(nums.len());
    search(&vals, Q { n: target as i128, d: 1 }, &mut budget, &mut path).then(|| replay(nums, &path))
}
