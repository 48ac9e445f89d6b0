//! Hollow-node templates: the project's own (`templates/hollow-node.yaml`,
//! built in), upstream's (`test/kubemark/resources/hollow-node_template.yaml`
//! in a kubernetes checkout) or a file, rendered with minijinja in strict
//! mode: an undefined placeholder is an error listing every missing name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The project's own template.
pub const SIMPLIFIED: &str = include_str!("../../../templates/hollow-node.yaml");

/// Where upstream keeps its template inside a kubernetes checkout.
pub const UPSTREAM_PATH: &str = "test/kubemark/resources/hollow-node_template.yaml";

/// Which template to render.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    Simplified,
    /// Upstream's, from the kubernetes checkout at this path.
    Upstream(PathBuf),
    File(PathBuf),
}

/// A template's text and a name for messages.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub text: String,
}

impl Template {
    pub fn load(choice: &Choice) -> Result<Self> {
        let read = |path: &Path, what: &str| -> Result<Self> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read {what} {}: {e}", path.display())))?;
            Ok(Self {
                name: path.display().to_string(),
                text,
            })
        };
        match choice {
            Choice::Simplified => Ok(Self {
                name: "templates/hollow-node.yaml".into(),
                text: SIMPLIFIED.to_owned(),
            }),
            Choice::Upstream(checkout) => {
                read(&checkout.join(UPSTREAM_PATH), "the upstream template")
            }
            Choice::File(path) => read(path, "the template"),
        }
    }

    /// The placeholders the template uses.
    pub fn placeholders(&self) -> Result<BTreeSet<String>> {
        let env = environment();
        let compiled = env
            .template_from_str(&self.text)
            .map_err(|e| self.error(e))?;
        Ok(placeholders(&env, &compiled))
    }

    /// Whether the template can give hollow nodes per-node identity.
    pub fn supports_node_identity(&self) -> Result<bool> {
        Ok(self.placeholders()?.contains("node_identity"))
    }

    /// Render with `vars`; every placeholder must have a value.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String> {
        let env = environment();
        let compiled = env
            .template_from_str(&self.text)
            .map_err(|e| self.error(e))?;
        let missing: Vec<String> = placeholders(&env, &compiled)
            .into_iter()
            .filter(|p| !vars.contains_key(p))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Undefined {
                name: self.name.clone(),
                missing,
            });
        }
        compiled.render(vars).map_err(|e| self.error(e))
    }

    fn error(&self, e: minijinja::Error) -> Error {
        Error::Template {
            name: self.name.clone(),
            reason: e.to_string(),
        }
    }
}

/// The variables `compiled` reads that are not the environment's own (`namespace` counts).
fn placeholders(env: &minijinja::Environment, compiled: &minijinja::Template) -> BTreeSet<String> {
    let globals: BTreeSet<&str> = env.globals().map(|(k, _)| k).collect();
    compiled
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !globals.contains(v.as_str()) || v == "namespace")
        .collect()
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // YAML, not HTML: nothing is escaped.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_name_is_listed() {
        let t = Template {
            name: "t".into(),
            text: "a: {{ numreplicas }}\nb: {{kubemark_image_tag}}\nc: {{ namespace }}\n{% for p in [1] %}{{ p }}{% endfor %}\n".into(),
        };
        let vars = BTreeMap::from([("numreplicas".to_owned(), "3".to_owned())]);
        match t.render(&vars).unwrap_err() {
            Error::Undefined { missing, .. } => {
                assert_eq!(missing, ["kubemark_image_tag", "namespace"])
            }
            other => panic!("{other:?}"),
        }
        let vars = BTreeMap::from([
            ("numreplicas".to_owned(), "3".to_owned()),
            ("kubemark_image_tag".to_owned(), "v1".to_owned()),
            ("namespace".to_owned(), "k".to_owned()),
        ]);
        assert_eq!(t.render(&vars).unwrap(), "a: 3\nb: v1\nc: k\n1");
    }

    #[test]
    fn the_project_template_uses_known_placeholders() {
        let names = Template::load(&Choice::Simplified)
            .unwrap()
            .placeholders()
            .unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            [
                "hollow_kubelet_mem_Ki",
                "hollow_kubelet_millicpu",
                "hollow_kubelet_params",
                "hollow_node_labels",
                "hollow_proxy_mem_Ki",
                "hollow_proxy_millicpu",
                "hollow_proxy_params",
                "init_image",
                "kubemark_image_registry",
                "kubemark_image_tag",
                "namespace",
                "node_identity",
                "numreplicas",
            ]
        );
    }
}
