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

#[derive(Clone)]
struct Item {
    v: Q,
    text: String,
    /// Compound expressions get parenthesized when they become operands.
    compound: bool,
}

fn operand(it: &Item) -> String {
    if it.compound {
        format!("({})", it.text)
    } else {
        it.text.clone()
    }
}

fn search(items: &mut [Item], target: Q, depth_budget: &mut u64) -> Option<String> {
    if items.len() == 1 {
        return (items[0].v == target).then(|| items[0].text.clone());
    }
    if *depth_budget == 0 {
        return None;
    }
    *depth_budget -= 1;
    let n = items.len();
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let (a, b) = (items[i].clone(), items[j].clone());
            let mut cands: Vec<(Option<Q>, char)> = vec![];
            if i < j {
                // + and × commute: try each unordered pair once.
                cands.push((
                    a.v.n.checked_mul(b.v.d).and_then(|x| x.checked_add(b.v.n.checked_mul(a.v.d)?)).and_then(|x| Q::new(x, a.v.d * b.v.d)),
                    '+',
                ));
                cands.push((a.v.n.checked_mul(b.v.n).and_then(|x| Q::new(x, a.v.d.checked_mul(b.v.d)?)), '*'));
            }
            cands.push((
                a.v.n.checked_mul(b.v.d).and_then(|x| x.checked_sub(b.v.n.checked_mul(a.v.d)?)).and_then(|x| Q::new(x, a.v.d * b.v.d)),
                '-',
            ));
            if b.v.n != 0 {
                cands.push((a.v.n.checked_mul(b.v.d).and_then(|x| Q::new(x, a.v.d.checked_mul(b.v.n)?)), '/'));
            }
            for (v, op) in cands {
                let Some(v) = v else { continue };
                let mut rest: Vec<Item> = items.iter().enumerate().filter(|(k, _)| *k != i && *k != j).map(|(_, x)| x.clone()).collect();
                rest.push(Item { v, text: format!("{} {op} {}", operand(&a), operand(&b)), compound: true });
                if let Some(s) = search(&mut rest, target, depth_budget) {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// One equation (spaces around operators, parentheses where needed) that uses every number
/// once and equals `target`, or None. Searches at most a few million nodes.
pub fn solve_countdown(nums: &[i64], target: i64) -> Option<String> {
    if nums.is_empty() || nums.len() > 6 {
        return None;
    }
    let mut items: Vec<Item> = nums.iter().map(|&x| Item { v: Q { n: x as i128, d: 1 }, text: x.to_string(), compound: false }).collect();
    if nums.iter().any(|&x| x < 0) {
        return None;
    }
    let mut budget = 5_000_000u64;
    search(&mut items, Q { n: target as i128, d: 1 }, &mut budget)
}
