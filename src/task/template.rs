//! Prompt templates. `base` and `qwen-instruct` are TinyZero's exactly; `compact` is ours, for
//! tiny models: a short prompt and a bare `<answer>…</answer>` response. Each task renders its
//! own text for each template (`Task::prompt`).
use anyhow::bail;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// TinyZero's system line for the `base` template.
pub const SYSTEM: &str = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.";
