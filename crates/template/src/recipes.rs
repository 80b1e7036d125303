//! The templates this crate knows how to build.

/// How a recipe's tree is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `mmdebstrap --variant=minbase --include=<packages> <suite>` from a Debian mirror.
    Mmdebstrap,
    /// A copy of the host's static busybox ([`crate::HOST_BUSYBOX`], Debian package
    /// `busybox-static`) with a link for each applet; no download.
    HostBusybox,
}

/// A template recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The template's name (the sandbox type).
    pub name: &'static str,
    /// One line for `sandboxd template ls`.
    pub description: &'static str,
    /// The Debian suite the packages come from.
    pub suite: &'static str,
    /// The Debian packages in the tree (for `minbase`, in addition to its essential set; the
    /// essential tools are listed anyway so the list documents what a sandbox can rely on).
    pub packages: &'static [&'static str],
    /// How the tree is made.
    pub method: Method,
    /// Raised with every change to what the recipe puts in a tree (packages, hooks,
    /// post-processing) that templates built before it should get: a build finds a template
    /// of a lower revision stale and rebuilds it. Templates built before revisions were
    /// recorded count as revision 1.
    pub revision: u32,
}

static RECIPES: &[Recipe] = &[
    Recipe {
        name: "base",
        description: "Debian bookworm (minbase) with bash, python3 (pip, venv), git, curl and \
                      common command-line tools",
        suite: "bookworm",
        packages: &[
            // Essential in minbase; listed so the contract is written down.
            "bash",
            "coreutils",
            "findutils",
            "grep",
            "sed",
            "tar",
            "gzip",
            // Added.
            "ca-certificates",
            "curl",
            "git",
            "iproute2",
            "less",
            "procps",
            "python3",
            "python3-pip",
            "python3-venv",
            "unzip",
            "xz-utils",
        ],
        method: Method::Mmdebstrap,
        // 2: C.UTF-8 in a locale archive.
        revision: 2,
    },
    Recipe {
        name: "minimal",
        description: "busybox only (copied from the host's busybox-static); for quick tests",
        suite: "bookworm",
        packages: &["busybox-static"],
        method: Method::HostBusybox,
        revision: 1,
    },
];

/// All recipes, `base` first.
pub fn recipes() -> &'static [Recipe] {
    RECIPES
}

/// The recipe called `name`.
pub fn recipe(name: &str) -> Option<&'static Recipe> {
    RECIPES.iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_found_by_name() {
        assert_eq!(recipe("base").unwrap().method, Method::Mmdebstrap);
        assert_eq!(recipe("minimal").unwrap().method, Method::HostBusybox);
        assert!(recipe("Base").is_none());
        assert!(recipe("").is_none());
        assert!(recipe("../base").is_none());
    }

    #[test]
    fn recipes_are_well_formed() {
        assert_eq!(recipes()[0].name, "base");
        for r in recipes() {
            assert!(crate::valid_name(r.name), "{}", r.name);
            assert!(!r.packages.is_empty());
            assert!(!r.description.is_empty());
            assert_eq!(recipes().iter().filter(|o| o.name == r.name).count(), 1);
        }
        let base = recipe("base").unwrap();
        for p in [
            "bash",
            "coreutils",
            "python3",
            "git",
            "curl",
            "ca-certificates",
        ] {
            assert!(base.packages.contains(&p), "{p}");
        }
    }
}
