//! Plain-text output: tables, ages, exit statuses.

use std::time::{SystemTime, UNIX_EPOCH};

use sandboxd_client::types::{Sandbox, SandboxState};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `42s`, `5m`, `3h`, `2d`.
pub fn human(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Columns separated by two spaces, padded to the widest cell; the last column is not padded.
pub fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(|h| h.chars().count());
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn state_name(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Creating => "creating",
        SandboxState::Running => "running",
        SandboxState::Warm => "warm",
        SandboxState::Paused => "paused",
        SandboxState::Stopping => "stopping",
        SandboxState::Stopped => "stopped",
        SandboxState::Error => "error",
        SandboxState::Recycled => "recycled",
        SandboxState::Replaced => "replaced",
    }
}

/// The `ls` table: ID, TYPE, STATE, AGE, EXPIRES, METADATA.
pub fn sandbox_table(list: &[Sandbox], now: i64) -> String {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            let expires = match s.expires_at_ms {
                None => "never".to_string(),
                Some(t) if t <= now => "now".to_string(),
                Some(t) => format!("in {}", human(t - now)),
            };
            let metadata = s
                .metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            [
                s.id.clone(),
                s.sandbox_type.clone(),
                state_name(s.state).to_string(),
                human(now - s.created_at_ms),
                expires,
                metadata,
            ]
        })
        .collect();
    table(
        &["ID", "TYPE", "STATE", "AGE", "EXPIRES", "METADATA"],
        &rows,
    )
}

/// The process exit status for a command's end: its code; 124 on timeout (like `timeout(1)`);
/// 128 + signal when a signal ended it.
pub fn exit_status(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> u8 {
    if timed_out {
        return 124;
    }
    match (code, signal) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_client::types::Resources;

    #[test]
    fn ages() {
        assert_eq!(human(0), "0s");
        assert_eq!(human(59_999), "59s");
        assert_eq!(human(60_000), "1m");
        assert_eq!(human(7_200_000), "2h");
        assert_eq!(human(3 * 86_400_000), "3d");
        assert_eq!(human(-5), "0s");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(Some(0), None, false), 0);
        assert_eq!(exit_status(Some(3), None, false), 3);
        assert_eq!(exit_status(None, Some(9), false), 137);
        assert_eq!(exit_status(None, Some(9), true), 124);
        assert_eq!(exit_status(Some(256 + 2), None, false), 2);
    }

    #[test]
    fn sandbox_rows() {
        let now = 1_000_000_000;
        let sb = Sandbox {
            id: "sb-0123456789abcdef".into(),
            sandbox_type: "base".into(),
            state: SandboxState::Running,
            session_id: "s".into(),
            backend: "native".into(),
            created_at_ms: now - 90_000,
            expires_at_ms: Some(now + 240_000),
            resources: Resources::default(),
            metadata: [("team".to_string(), "red".to_string())].into(),
            reason: None,
            replaced_by: None,
            ports: Vec::new(),
            image: None,
        };
        let never = Sandbox {
            expires_at_ms: None,
            metadata: Default::default(),
            ..sb.clone()
        };
        let t = sandbox_table(&[sb, never], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID                   TYPE  STATE    AGE  EXPIRES  METADATA"
        );
        assert_eq!(
            lines[1],
            "sb-0123456789abcdef  base  running  1m   in 4m    team=red"
        );
        assert_eq!(lines[2], "sb-0123456789abcdef  base  running  1m   never");
    }
}
