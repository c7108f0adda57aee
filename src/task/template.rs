//! Prompt templates. `base` and `qwen-instruct` are TinyZero's exactly; `compact` is ours, for
//! tiny models: a short prompt and a bare `<answer>…</answer>` response.
use super::solver::solve_countdown;
use super::Problem;
use anyhow::bail;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Template {
    #[default]
    Base,
    QwenInstruct,
    Compact,
}

impl std::str::FromStr for Template {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "base" => Ok(Template::Base),
            "qwen-instruct" => Ok(Template::QwenInstruct),
            "compact" => Ok(Template::Compact),
            other => bail!("unknown template '{other}' (expected base, qwen-instruct or compact)"),
        }
    }
}

/// `[44, 19, 35]`, as Python prints a list.
fn py_list(nums: &[i64]) -> String {
    let items: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
    format!("[{}]", items.join(", "))
}

const SYSTEM: &str = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.";

fn countdown_request(nums: &[i64], target: i64) -> String {
    format!(
        "Using the numbers {}, create an equation that equals {target}. You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.",
        py_list(nums)
    )
}

pub fn render_prompt(p: &Problem, t: Template) -> String {
    match (p, t) {
        (Problem::Countdown { nums, target }, Template::Base) => {
            format!("{SYSTEM}\nUser: {}\nAssistant: Let me solve this step by step.\n<think>", countdown_request(nums, *target))
        }
        (Problem::Countdown { nums, target }, Template::QwenInstruct) => format!(
            "<|im_start|>system\nYou are a helpful assistant. You first thinks about the reasoning process in the mind and then provides the user with the answer.<|im_end|>\n<|im_start|>user\n {}<|im_end|>\n<|im_start|>assistant\nLet me solve this step by step.\n<think>",
            countdown_request(nums, *target)
        ),
        (Problem::Countdown { nums, target }, Template::Compact) => {
            let ns: Vec<String> = nums.iter().map(|n| n.to_string()).collect();
            format!("numbers {} target {target}\n", ns.join(" "))
        }
        (Problem::Multiply { a, b }, Template::Compact) => format!("{a} * {b} =\n"),
        (Problem::Multiply { a, b }, Template::QwenInstruct) => format!(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nGive me the answer of the following equation: {a} * {b} =<|im_end|>\n<|im_start|>assistant\nOk let me think about it.\n<think>"
        ),
        (Problem::Multiply { a, b }, Template::Base) => {
            format!("User: Give me the answer of the following equation: {a} * {b} = Assistant: Ok let me think about it.\n<think>")
        }
    }
}

/// A correct response in the template's format, from the solver (Countdown) or the product
/// (multiplication); the answer tag is on the last line, as the reward requires.
pub fn sft_response(p: &Problem, t: Template) -> Option<String> {
    let (answer, check) = match p {
        Problem::Countdown { nums, target } => {
            let eq = solve_countdown(nums, *target)?;
            (eq.clone(), format!("{eq} = {target}"))
        }
        Problem::Multiply { a, b } => {
            let prod = (*a as i128 * *b as i128).to_string();
            (prod.clone(), format!("{a} * {b} = {prod}"))
        }
    };
    Some(match t {
        Template::Compact => format!("<answer>{}</answer>", answer.replace(' ', "")),
        Template::Base | Template::QwenInstruct => format!(" {check} </think>\n<answer> {answer} </answer>"),
    })
}
