//! Finds the Debian mirror the host uses, from its apt sources.

use std::path::{Path, PathBuf};

/// The mirror used when the host's apt sources name none for bookworm.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The suite whose mirror [`default_mirror`] looks for.
const SUITE: &str = "bookworm";

/// The host's mirror for Debian bookworm, read from `/etc/apt/sources.list` and
/// `/etc/apt/sources.list.d/*.{list,sources}` (one-line and deb822 formats, in apt's order), or
/// [`DEFAULT_MIRROR`] if none is found.
pub fn default_mirror() -> String {
    mirror_from_dir(Path::new("/etc/apt"), SUITE).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// The first mirror for `suite` in the apt configuration under `etc_apt`.
pub(crate) fn mirror_from_dir(etc_apt: &Path, suite: &str) -> Option<String> {
    let mut files = vec![etc_apt.join("sources.list")];
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
        .collect();
    parts.sort();
    files.extend(parts);
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        if f.extension().is_some_and(|e| e == "sources") {
            mirror_from_deb822(&text, suite)
        } else {
            mirror_from_one_line(&text, suite)
        }
    })
}

/// Whether apt can fetch from `uri` without extra methods installed in the chroot.
fn usable_uri(uri: &str) -> bool {
    ["http://", "https://", "file:/"]
        .iter()
        .any(|s| uri.starts_with(s))
}

/// The first `deb` URI for `suite` in a deb822 `.sources` file.
pub(crate) fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    let mut stanzas: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !stanzas.last().is_some_and(|s| s.is_empty()) {
                stanzas.push(Vec::new());
            }
            continue;
        }
        let stanza = stanzas.last_mut().expect("never empty");
        if line.starts_with([' ', '\t']) {
            // A continuation of the previous field's value.
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    stanzas.iter().find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let enabled = !matches!(field("enabled"), Some(v) if v.eq_ignore_ascii_case("no"));
        let is_deb = field("types").is_some_and(|v| v.split_whitespace().any(|t| t == "deb"));
        let has_suite = field("suites").is_some_and(|v| v.split_whitespace().any(|s| s == suite));
        if !(enabled && is_deb && has_suite) {
            return None;
        }
        field("uris")?
            .split_whitespace()
            .find(|u| usable_uri(u))
            .map(|u| u.trim_end_matches('/').to_string())
    })
}

/// The first `deb` URI for `suite` in a one-line-format `.list` file.
pub(crate) fn mirror_from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("").trim();
        let rest = line.strip_prefix("deb")?;
        if !rest.starts_with([' ', '\t']) {
            return None; // deb-src
        }
        let rest = rest.trim_start();
        // Options: `[arch=amd64 signed-by=/x.gpg]`.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        let line_suite = words.next()?;
        (line_suite == suite && usable_uri(uri)).then(|| uri.trim_end_matches('/').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_SOURCES: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_as_on_this_host() {
        assert_eq!(
            mirror_from_deb822(DEBIAN_SOURCES, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_from_deb822(DEBIAN_SOURCES, "bookworm-security").as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(mirror_from_deb822(DEBIAN_SOURCES, "trixie"), None);
    }

    #[test]
    fn deb822_skips_disabled_src_only_and_unusable_stanzas() {
        let text = "\
types: deb-src
uris: http://src.example/debian
suites: bookworm

Types: deb
URIs: http://off.example/debian
Suites: bookworm
Enabled: no


Types: deb
URIs: cdrom:[Debian]/
Suites: bookworm

Types: deb deb-src
URIs: mirror+file:/etc/apt/mirrors.txt
 https://mirror.example/debian/
Suites:
 bookworm-backports
 bookworm
Components: main
";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("https://mirror.example/debian")
        );
        assert_eq!(mirror_from_deb822("", "bookworm"), None);
        assert_eq!(mirror_from_deb822("garbage\n\n:::\n", "bookworm"), None);
    }

    #[test]
    fn one_line_format() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ bookworm main contrib
deb http://later.example/debian bookworm main
";
        assert_eq!(
            mirror_from_one_line(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb [broken http://x bookworm main", "bookworm"),
            None
        );
        assert_eq!(
            mirror_from_one_line("debx http://x bookworm main", "bookworm"),
            None
        );
    }

    #[test]
    fn directory_in_apts_order() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(mirror_from_dir(d.path(), "bookworm"), None);
        let parts = d.path().join("sources.list.d");
        std::fs::create_dir_all(&parts).unwrap();
        std::fs::write(parts.join("z.sources"), DEBIAN_SOURCES).unwrap();
        std::fs::write(
            parts.join("other.list.disabled"),
            "deb http://disabled.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_dir(d.path(), "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        std::fs::write(
            parts.join("a.list"),
            "deb http://first.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_dir(d.path(), "bookworm").as_deref(),
            Some("http://first.example/debian")
        );
        std::fs::write(
            d.path().join("sources.list"),
            "deb http://main.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            mirror_from_dir(d.path(), "bookworm").as_deref(),
            Some("http://main.example/debian")
        );
    }

    #[test]
    fn default_mirror_is_a_url() {
        let m = default_mirror();
        assert!(usable_uri(&m), "{m}");
    }
}
