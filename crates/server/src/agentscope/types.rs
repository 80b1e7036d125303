//! Sandbox types: what an AgentScope `sandbox_type` means on this server.
//!
//! A type names the template its sandboxes start from, the environment variables they get
//! (under the create request's own, which win), their resources, the time one tool call may
//! take, and the tool groups `list_tools` shows and `call_tool` dispatches to
//! ([`ToolGroup`]). The built-in types are `base`, `base_async` (generic tools), `filesystem`
//! and `filesystem_async` (generic and filesystem tools), all on the `base` template. More
//! come from `--extension FILE` TOML files ([`TypeRegistry::load`]):
//!
//! ```toml
//! [[sandbox]]
//! type = "my_custom_sandbox"       # required: lowercase letters, digits, '-', '_'
//! template = "base"                # required: an installed template
//! description = "my sandbox"       # optional
//! timeout = 60                     # optional: seconds one tool call may take
//! security_level = "medium"        # optional: low, medium (default) or high
//! tools = ["generic", "filesystem"] # optional: default ["generic"]
//! [sandbox.environment]            # optional: strings
//! TAVILY_API_KEY = "..."
//! [sandbox.resources]              # optional: the /v1 API's resources
//! memory_mb = 512
//! cpus = 0.5
//! pids = 128
//! ```
//!
//! A name the registry does not know keeps meaning what it meant before types existed: the
//! template of that name (for `<t>_async`, `<t>` when only that is installed) with the generic
//! tools ([`SandboxType::fallback`]).
//!
//! `timeout` is AgentScope's: not the sandbox's lifetime (`SANDBOX_TIMEOUT` and the heartbeat
//! govern that) but how long the runtime serves one request. Here it bounds one
//! `run_shell_command` or `run_ipython_cell` call, and `get_info` reports it. The built-in
//! types set none.
//!
//! `security_level` is recorded and validated but changes nothing: every sandbox of the native
//! backend gets the same isolation (its own namespaces without network, cgroup limits, no
//! capabilities, seccomp, landlock). AgentScope does not use it either.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sandboxd_core::manager::{check_resources, is_valid_env_name};
use sandboxd_core::pool::PoolSpec;
use sandboxd_core::templates::Templates;
use sandboxd_types::Resources;
use serde::Deserialize;

/// A group of tools a sandbox type offers (the keys of `list_tools`' answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolGroup {
    /// `run_shell_command` and `run_ipython_cell`.
    Generic,
    /// The tools of MCP's filesystem server, on `/workspace` ([`super::filesystem`]).
    Filesystem,
}

impl ToolGroup {
    /// The group's name in `list_tools`.
    pub fn name(self) -> &'static str {
        match self {
            ToolGroup::Generic => "generic",
            ToolGroup::Filesystem => "filesystem",
        }
    }
}

/// AgentScope's security level of a sandbox type (informational, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityLevel {
    /// `low`.
    Low,
    /// `medium`, AgentScope's default.
    #[default]
    Medium,
    /// `high`.
    High,
}

/// One sandbox type.
#[derive(Clone, PartialEq)]
pub struct SandboxType {
    /// The name clients give as `sandbox_type`.
    pub name: String,
    /// The template its sandboxes start from.
    pub template: String,
    /// What it is for.
    pub description: String,
    /// Seconds one tool call may run (AgentScope's `timeout`); `None`: no limit.
    pub timeout_secs: Option<u64>,
    /// Environment variables of its sandboxes, under the create request's own.
    pub environment: BTreeMap<String, String>,
    /// Resources of its sandboxes; `None`: the server's defaults.
    pub resources: Option<Resources>,
    /// AgentScope's security level (informational).
    pub security_level: SecurityLevel,
    /// Its tool groups, in listing order.
    pub tools: Vec<ToolGroup>,
}

impl fmt::Debug for SandboxType {
    // The environment's values may be secrets (API keys): only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxType")
            .field("name", &self.name)
            .field("template", &self.template)
            .field("description", &self.description)
            .field("timeout_secs", &self.timeout_secs)
            .field("environment", &self.environment.keys().collect::<Vec<_>>())
            .field("resources", &self.resources)
            .field("security_level", &self.security_level)
            .field("tools", &self.tools)
            .finish()
    }
}

/// Template of the built-in types.
const BASE: &str = "base";
/// Prefix of the names of pools made for one type (never a template name: `:` is not allowed
/// there).
const TYPE_POOL_PREFIX: &str = "type:";

impl SandboxType {
    /// A type on `template` with the server's defaults for everything else.
    fn plain(name: &str, template: &str, description: &str, tools: &[ToolGroup]) -> Self {
        SandboxType {
            name: name.to_string(),
            template: template.to_string(),
            description: description.to_string(),
            timeout_secs: None,
            environment: BTreeMap::new(),
            resources: None,
            security_level: SecurityLevel::Medium,
            tools: tools.to_vec(),
        }
    }

    /// The type of a name no registry knows: the template of that name, or for `<t>_async`
    /// (AgentScope's async twin types, which upstream runs from the same image) `<t>` when
    /// only that is among `installed`; generic tools.
    pub fn fallback(name: &str, installed: &[String]) -> Self {
        let is = |t: &str| installed.iter().any(|i| i == t);
        let template = match name.strip_suffix("_async") {
            Some(base) if !is(name) && is(base) => base,
            _ => name,
        };
        Self::plain(name, template, "", &[ToolGroup::Generic])
    }

    /// Whether its sandboxes have `group`'s tools.
    pub fn has(&self, group: ToolGroup) -> bool {
        self.tools.contains(&group)
    }

    /// The warm pool its sandboxes come from: the template's plain pool when the type adds
    /// nothing a sandbox is started with, else a pool made for this type alone.
    pub fn pool(&self) -> PoolSpec {
        if self.environment.is_empty() && self.resources.is_none() {
            PoolSpec::template(&self.template)
        } else {
            PoolSpec {
                name: format!("{TYPE_POOL_PREFIX}{}", self.name),
                template: self.template.clone(),
                env: self.environment.clone(),
                resources: self.resources.clone(),
            }
        }
    }
}

/// Why an extension file cannot be used. Each names the file; an invalid entry also names the
/// entry (1-based, in file order) and the field.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    /// The file cannot be read.
    #[error("extension {}: cannot read it: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not TOML of an extension's shape (the message names the line and field).
    #[error("extension {}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A field of a `[[sandbox]]` entry is invalid.
    #[error("extension {}: [[sandbox]] #{entry} (type {name:?}): {field}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based index of the entry in the file.
        entry: usize,
        /// The entry's type name.
        name: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// An extension file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionFile {
    #[serde(default)]
    sandbox: Vec<Entry>,
}

/// One `[[sandbox]]` of an extension file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(rename = "type")]
    name: String,
    template: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    security_level: SecurityLevel,
    #[serde(default)]
    tools: Option<Vec<ToolGroup>>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    resources: Option<Resources>,
}

/// The sandbox types a server knows: the built-in ones and those of its extension files.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeRegistry {
    types: BTreeMap<String, SandboxType>,
    /// Names of the types from extension files, in load order.
    custom: Vec<String>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl TypeRegistry {
    /// The built-in types only.
    pub fn builtin() -> Self {
        use ToolGroup::{Filesystem, Generic};
        let types = [
            SandboxType::plain("base", BASE, "Base sandbox", &[Generic]),
            SandboxType::plain("base_async", BASE, "Base sandbox (Async)", &[Generic]),
            SandboxType::plain(
                "filesystem",
                BASE,
                "Filesystem sandbox",
                &[Generic, Filesystem],
            ),
            SandboxType::plain(
                "filesystem_async",
                BASE,
                "Filesystem sandbox (Async)",
                &[Generic, Filesystem],
            ),
        ];
        TypeRegistry {
            types: types.into_iter().map(|t| (t.name.clone(), t)).collect(),
            custom: Vec::new(),
        }
    }

    /// The built-in types and those of `files`, whose templates must be installed in
    /// `templates`. Type names must be unique over all files and not name a built-in type.
    pub fn load(files: &[PathBuf], templates: &Templates) -> Result<Self, ExtensionError> {
        let mut registry = Self::builtin();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ExtensionError::Io {
                path: path.clone(),
                source,
            })?;
            registry.add_file(path, &text, templates)?;
        }
        Ok(registry)
    }

    /// Add the types of one extension file's text.
    fn add_file(
        &mut self,
        path: &Path,
        text: &str,
        templates: &Templates,
    ) -> Result<(), ExtensionError> {
        let file: ExtensionFile = toml::from_str(text).map_err(|e| ExtensionError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if file.sandbox.is_empty() {
            return Err(ExtensionError::Syntax {
                path: path.to_path_buf(),
                message: "defines no sandbox type (expected [[sandbox]] entries)".into(),
            });
        }
        for (i, entry) in file.sandbox.into_iter().enumerate() {
            let invalid = |field: &'static str, reason: String| ExtensionError::Invalid {
                path: path.to_path_buf(),
                entry: i + 1,
                name: entry.name.clone(),
                field,
                reason,
            };
            let t = self
                .check_entry(&entry, templates)
                .map_err(|(f, r)| invalid(f, r))?;
            self.custom.push(t.name.clone());
            self.types.insert(t.name.clone(), t);
        }
        Ok(())
    }

    /// An entry as a type, or the field that is wrong and why.
    fn check_entry(
        &self,
        e: &Entry,
        templates: &Templates,
    ) -> Result<SandboxType, (&'static str, String)> {
        if !Templates::valid_name(&e.name) {
            return Err((
                "type",
                "expected 1 to 64 lowercase letters, digits, '-' or '_'".into(),
            ));
        }
        if self.types.contains_key(&e.name) {
            let what = if self.custom.contains(&e.name) {
                "is defined twice"
            } else {
                "is a built-in type and cannot be redefined"
            };
            return Err(("type", format!("{:?} {what}", e.name)));
        }
        if !Templates::valid_name(&e.template) {
            return Err((
                "template",
                format!("{:?} is not a template name", e.template),
            ));
        }
        if templates.rootfs(&e.template).is_none() {
            let installed = templates.list();
            let installed = if installed.is_empty() {
                "none".to_string()
            } else {
                installed.join(", ")
            };
            return Err((
                "template",
                format!(
                    "{:?} is not installed in {} (installed: {installed}; build it with \
                     `sandboxd template build {}`)",
                    e.template,
                    templates.dir().display(),
                    e.template
                ),
            ));
        }
        if e.timeout == Some(0) {
            return Err((
                "timeout",
                "expected at least 1 second (leave it out for no limit)".into(),
            ));
        }
        let tools = e.tools.clone().unwrap_or_else(|| vec![ToolGroup::Generic]);
        if tools.is_empty() {
            return Err(("tools", "expected at least one tool group".into()));
        }
        if let Some(twice) = tools
            .iter()
            .enumerate()
            .find(|(i, t)| tools[..*i].contains(t))
        {
            return Err(("tools", format!("{:?} is listed twice", twice.1.name())));
        }
        for (k, v) in &e.environment {
            if !is_valid_env_name(k) {
                return Err((
                    "environment",
                    format!(
                        "{k:?} is not a variable name (letters, digits, '_', not starting with \
                         a digit)"
                    ),
                ));
            }
            if v.contains('\0') {
                return Err(("environment", format!("{k} contains a NUL byte")));
            }
        }
        let resources = e.resources.clone().filter(|r| *r != Resources::default());
        if let Some(r) = &resources {
            check_resources(r).map_err(|reason| ("resources", reason))?;
        }
        Ok(SandboxType {
            name: e.name.clone(),
            template: e.template.clone(),
            description: e.description.clone(),
            timeout_secs: e.timeout,
            environment: e.environment.clone(),
            resources,
            security_level: e.security_level,
            tools,
        })
    }

    /// The type of this name, if known.
    pub fn get(&self, name: &str) -> Option<&SandboxType> {
        self.types.get(name)
    }

    /// The type of this name: a known one, else [`SandboxType::fallback`] with the
    /// `installed` templates.
    pub fn resolve(&self, name: &str, installed: &[String]) -> SandboxType {
        self.get(name)
            .cloned()
            .unwrap_or_else(|| SandboxType::fallback(name, installed))
    }

    /// The types from extension files, in load order.
    pub fn custom(&self) -> impl Iterator<Item = &SandboxType> {
        self.custom.iter().filter_map(|n| self.types.get(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates(names: &[&str]) -> (tempfile::TempDir, Templates) {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir_all(d.path().join(n).join("rootfs")).unwrap();
            std::fs::write(d.path().join(n).join("ready"), "").unwrap();
        }
        let t = Templates::new(d.path());
        (d, t)
    }

    fn load(text: &str) -> Result<TypeRegistry, String> {
        let (_d, t) = templates(&["base", "gui"]);
        let mut r = TypeRegistry::builtin();
        r.add_file(Path::new("ext.toml"), text, &t)
            .map(|()| r)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn builtin_types() {
        let r = TypeRegistry::builtin();
        let fs = r.get("filesystem_async").unwrap();
        assert_eq!(fs.template, "base");
        assert_eq!(fs.tools, vec![ToolGroup::Generic, ToolGroup::Filesystem]);
        assert!(!r.get("base").unwrap().has(ToolGroup::Filesystem));
        assert_eq!(
            r.get("base_async").unwrap().pool(),
            PoolSpec::template("base")
        );
        assert_eq!(r.custom().count(), 0);
    }

    #[test]
    fn fallback_keeps_the_template_rules() {
        let installed = vec!["base".to_string(), "gui".to_string()];
        let r = TypeRegistry::builtin();
        let gui = r.resolve("gui_async", &installed);
        assert_eq!(
            (gui.template.as_str(), gui.tools.as_slice()),
            ("gui", &[ToolGroup::Generic][..])
        );
        assert_eq!(r.resolve("other_async", &installed).template, "other_async");
        assert_eq!(r.resolve("gui", &installed).template, "gui");
        // A known type wins over the fallback.
        assert_eq!(r.resolve("filesystem", &installed).template, "base");
    }

    #[test]
    fn a_full_entry() {
        let r = load(
            r#"
            [[sandbox]]
            type = "my_custom_sandbox"
            template = "gui"
            description = "my sandbox"
            timeout = 60
            security_level = "high"
            tools = ["filesystem", "generic"]
            [sandbox.environment]
            TAVILY_API_KEY = "secret-key"
            [sandbox.resources]
            memory_mb = 256
            cpus = 1
            pids = 64

            [[sandbox]]
            type = "small"
            template = "base"
            "#,
        )
        .unwrap();
        let t = r.get("my_custom_sandbox").unwrap();
        assert_eq!(t.template, "gui");
        assert_eq!(t.timeout_secs, Some(60));
        assert_eq!(t.security_level, SecurityLevel::High);
        assert_eq!(t.tools, vec![ToolGroup::Filesystem, ToolGroup::Generic]);
        assert_eq!(t.environment["TAVILY_API_KEY"], "secret-key");
        assert_eq!(
            t.resources,
            Some(Resources {
                memory_mb: Some(256),
                cpus: Some(1.0),
                pids: Some(64),
                disk_mb: None,
            })
        );
        // Its own pool: a warm sandbox of the template lacks its environment.
        let pool = t.pool();
        assert_eq!(pool.name, "type:my_custom_sandbox");
        assert_eq!((pool.template.as_str(), pool.env.len()), ("gui", 1));
        // Secrets stay out of debug output.
        assert!(!format!("{r:?}").contains("secret-key"));

        let small = r.get("small").unwrap();
        assert_eq!(small.tools, vec![ToolGroup::Generic]);
        assert_eq!(small.security_level, SecurityLevel::Medium);
        assert_eq!(small.timeout_secs, None);
        assert_eq!(small.pool(), PoolSpec::template("base"));
        let names: Vec<&str> = r.custom().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["my_custom_sandbox", "small"]);
    }

    #[test]
    fn invalid_entries_name_the_file_entry_and_field() {
        let entry =
            |extra: &str| format!("[[sandbox]]\ntype = \"ok\"\ntemplate = \"base\"\n{extra}");
        let cases = [
            (
                "[[sandbox]]\ntype = \"Bad Name\"\ntemplate = \"base\"\n".to_string(),
                "#1 (type \"Bad Name\"): type:",
            ),
            (
                "[[sandbox]]\ntype = \"x\"\ntemplate = \"nope\"\n".to_string(),
                "#1 (type \"x\"): template: \"nope\" is not installed",
            ),
            (
                format!(
                    "{}{}",
                    entry(""),
                    "[[sandbox]]\ntype = \"ok\"\ntemplate = \"base\"\n"
                ),
                "#2 (type \"ok\"): type: \"ok\" is defined twice",
            ),
            (
                "[[sandbox]]\ntype = \"base\"\ntemplate = \"base\"\n".to_string(),
                "#1 (type \"base\"): type: \"base\" is a built-in type",
            ),
            (
                entry("timeout = 0\n"),
                "): timeout: expected at least 1 second",
            ),
            (entry("tools = []\n"), "): tools: expected at least one"),
            (
                entry("tools = [\"generic\", \"generic\"]\n"),
                "): tools: \"generic\" is listed twice",
            ),
            (
                entry("[sandbox.environment]\n\"1X\" = \"v\"\n"),
                "): environment: \"1X\"",
            ),
            (
                entry("[sandbox.resources]\nmemory_mb = 1\n"),
                "): resources: resources.memory_mb",
            ),
        ];
        for (text, want) in cases {
            let e = load(&text).unwrap_err();
            assert!(e.starts_with("extension ext.toml: "), "{e}");
            assert!(e.contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn malformed_files_are_refused() {
        for (text, want) in [
            ("", "defines no sandbox type"),
            ("[[sandbox]]\ntype = \"x\"\n", "missing field `template`"),
            ("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\nimage = \"y\"\n", "unknown field `image`"),
            ("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\nsecurity_level = \"max\"\n", "unknown variant `max`"),
            ("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\ntools = [\"browser\"]\n", "unknown variant `browser`"),
            ("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\n[sandbox.environment]\nA = 1\n", "invalid type: integer"),
            ("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\n[sandbox.resources]\nmemory = \"512m\"\n", "unknown field `memory`"),
            ("[[sandbox]\n", "TOML parse error"),
            ("import os\n", "TOML parse error"),
            ("[[sandboxes]]\ntype = \"x\"\n", "unknown field `sandboxes`"),
        ] {
            let e = load(text).unwrap_err();
            assert!(e.starts_with("extension ext.toml: "), "{e}");
            assert!(e.contains(want), "want {want:?} in {e}");
        }
        // The error of a bad line names the line.
        let e =
            load("[[sandbox]]\ntype = \"x\"\ntemplate = \"base\"\nimage = \"y\"\n").unwrap_err();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn the_example_file_loads() {
        let r = load(include_str!("../../../../examples/extension.toml")).unwrap();
        let names: Vec<&str> = r.custom().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["research", "scratch"]);
        assert!(r.get("research").unwrap().has(ToolGroup::Filesystem));
    }

    #[test]
    fn load_reads_every_file() {
        let (d, t) = templates(&["base"]);
        let a = d.path().join("a.toml");
        let b = d.path().join("b.toml");
        std::fs::write(&a, "[[sandbox]]\ntype = \"one\"\ntemplate = \"base\"\n").unwrap();
        std::fs::write(&b, "[[sandbox]]\ntype = \"one\"\ntemplate = \"base\"\n").unwrap();
        let r = TypeRegistry::load(std::slice::from_ref(&a), &t).unwrap();
        assert!(r.get("one").is_some());
        let e = TypeRegistry::load(&[a, b.clone()], &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("defined twice"), "{e}");
        let e = TypeRegistry::load(&[d.path().join("missing.toml")], &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml: cannot read it"), "{e}");
    }
}
