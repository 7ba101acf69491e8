//! What a worker serves: the base model, or one named autoregressive reward model.

use genarm_proto::v1::Role;

/// The role of a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerRole {
    /// The base model (`genarm-base-worker`).
    Base,
    /// An autoregressive reward model served under a reward name (`genarm-rm-worker --name`).
    Reward {
        /// The name requests use in `guidance.rewards` and that `Step.reward_name` must carry.
        name: String,
    },
}

impl WorkerRole {
    /// The protocol's role value.
    pub fn proto(&self) -> Role {
        match self {
            WorkerRole::Base => Role::Base,
            WorkerRole::Reward { .. } => Role::Reward,
        }
    }

    /// The reward name a `Step` must carry: the served name, or `""` for the base.
    pub fn reward_name(&self) -> &str {
        match self {
            WorkerRole::Base => "",
            WorkerRole::Reward { name } => name,
        }
    }

    /// A short description for logs and errors (`base`, `reward model "helpful"`).
    pub fn describe(&self) -> String {
        match self {
            WorkerRole::Base => "base".into(),
            WorkerRole::Reward { name } => format!("reward model {name:?}"),
        }
    }
}

/// Checks a reward name: non-empty ASCII letters, digits, `_`, `-` and `.` (it appears in
/// `--rm NAME=URL` flags and in JSON request bodies).
pub fn validate_reward_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the reward name is empty: pass --name NAME (e.g. --name helpful)".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(format!(
            "the reward name {name:?} contains {c:?}: use ASCII letters, digits, '_', '-' and '.' only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_names_are_checked() {
        assert!(validate_reward_name("helpful").is_ok());
        assert!(validate_reward_name("harm-less_2.v1").is_ok());
        assert!(validate_reward_name("").unwrap_err().contains("--name"));
        assert!(validate_reward_name("a=b").unwrap_err().contains("'='"));
    }

    #[test]
    fn roles_map_to_the_protocol() {
        assert_eq!(WorkerRole::Base.proto(), Role::Base);
        assert_eq!(WorkerRole::Base.reward_name(), "");
        let rm = WorkerRole::Reward { name: "helpful".into() };
        assert_eq!(rm.proto(), Role::Reward);
        assert_eq!(rm.reward_name(), "helpful");
    }
}
