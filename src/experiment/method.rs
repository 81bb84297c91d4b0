//! The methods of a grid by name: a method, and for BA-LoRA optionally a preset other than the
//! base run's (`balora-iclr2026`), so one grid compares BA-LoRA's presets beside the other
//! methods (docs/methods.md, "Presets").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::finetune::{MethodName, Preset};

/// One method of a grid, written `lora`, `balora`, `balora-iclr2026`, … in a grid file and
/// used as its folder and report name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GridMethod {
    /// The method.
    pub method: MethodName,
    /// BA-LoRA's preset (`None`: the base run's).
    pub preset: Option<Preset>,
}

impl From<MethodName> for GridMethod {
    fn from(method: MethodName) -> Self {
        Self {
            method,
            preset: None,
        }
    }
}

impl fmt::Display for GridMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.preset {
            Some(p) => write!(f, "{}-{p}", self.method),
            None => write!(f, "{}", self.method),
        }
    }
}

impl FromStr for GridMethod {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        let (method, preset) = match name.split_once('-') {
            Some((m, p)) => (m, Some(p)),
            None => (name, None),
        };
        let method: MethodName = method
            .parse()
            .map_err(|e: balora_losses::LossError| e.to_string())?;
        let preset = preset
            .map(|p| {
                p.parse::<Preset>()
                    .map_err(|e| format!("method {name:?}: {e}"))
            })
            .transpose()?;
        if preset.is_some() && method != MethodName::Balora {
            return Err(format!(
                "method {name:?}: only balora takes a preset (balora-paper, balora-iclr2026)"
            ));
        }
        Ok(Self { method, preset })
    }
}

impl TryFrom<String> for GridMethod {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        name.parse()
    }
}

impl From<GridMethod> for String {
    fn from(m: GridMethod) -> Self {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_and_write_back() {
        for name in [
            "lora",
            "pissa",
            "balora",
            "monteclora",
            "balora-paper",
            "balora-iclr2026",
        ] {
            let m: GridMethod = name.parse().unwrap();
            assert_eq!(m.to_string(), name);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<GridMethod>(&json).unwrap(), m);
        }
        let m: GridMethod = "balora-iclr2026".parse().unwrap();
        assert_eq!(
            (m.method, m.preset),
            (MethodName::Balora, Some(Preset::Iclr2026))
        );
        assert!(
            "lora-iclr2026"
                .parse::<GridMethod>()
                .unwrap_err()
                .contains("only balora")
        );
        assert!(
            "balora-x"
                .parse::<GridMethod>()
                .unwrap_err()
                .contains("preset")
        );
        assert!("dora".parse::<GridMethod>().is_err());
    }
}
