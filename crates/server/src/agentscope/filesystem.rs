//! The `filesystem` tool group: the tools AgentScope's `FilesystemSandbox` calls, which upstream
//! are MCP's filesystem server (`@modelcontextprotocol/server-filesystem@2025.3.28`, run with
//! `/workspace` as its one allowed directory). Here they are the server's own code over the
//! [`Manager`]'s file operations, which the guest agent does confined to `/workspace`
//! (`openat2`): no Node inside the sandbox.
//!
//! Paths are absolute under `/workspace` or relative to it. A path that resolves outside is
//! refused here, before the agent is asked ("Access denied - path outside allowed directories:
//! ..."); the agent's confinement stays the second wall (a symlink out of `/workspace` is
//! refused by the kernel, and answered as upstream answers it).
//!
//! Results are what the MCP server answers, as AgentScope's runtime passes them on: one text,
//! `isError` with `Error: <message>` on failure. Texts follow upstream: `[FILE] name` / `[DIR]
//! name` lines, `Successfully wrote to <path>`, a git-style diff in a fenced block from
//! `edit_file`, `directory_tree` as indented JSON of `{name, type, children}`,
//! `get_file_info` as `key: value` lines, a missing file as Node's `ENOENT: no such file or
//! directory, <op> '<path>'`.
//!
//! Where it differs from upstream:
//! - `search_files` matches names case-insensitively by substring, as upstream; a pattern
//!   with `*`, `?` or `[` is also taken as a glob, against the name (or, when it holds a `/`,
//!   against the path below the search root), so `*.txt` finds text files.
//! - `get_file_info`'s `created` and `accessed` are the modification time: the agent reports
//!   only that one.
//! - `write_file` creates missing parent directories (upstream refuses: "Parent directory does
//!   not exist"); a `move_file` to a missing directory fails with `ENOENT`.
//! - `directory_tree` and `search_files` see at most 32 levels and 5000 entries below their
//!   path (the agent's listing limits); `read_file` reads at most 16 MiB.
//! - Listings are sorted by name (upstream: in the order the file system gives).

use futures::StreamExt;
use sandboxd_core::{CoreError, Manager};
use sandboxd_protocol::AgentErrorKind;
use sandboxd_types::{EntryKind, FileEntry};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use similar::{ChangeTag, TextDiff};

use super::tools::schema;
use crate::error::ApiError;

/// The one directory the tools may touch.
pub const ALLOWED_DIR: &str = "/workspace";

/// The tools of the group, in listing order.
pub const NAMES: &[&str] = &[
    "read_file",
    "read_multiple_files",
    "write_file",
    "edit_file",
    "create_directory",
    "list_directory",
    "directory_tree",
    "move_file",
    "search_files",
    "get_file_info",
    "list_allowed_directories",
];

/// Deepest listing of `directory_tree` and `search_files` (the manager's limit).
const MAX_DEPTH: u32 = 32;
/// Largest file `read_file` and `edit_file` read.
const MAX_TEXT_BYTES: usize = 16 << 20;
/// Lines of context around each change in `edit_file`'s diff (jsdiff's default).
const DIFF_CONTEXT: usize = 4;

/// The `filesystem` group of `list_tools`: `{name: tool}`.
pub fn tools() -> Value {
    let path = || json!({"path": {"type": "string"}});
    let strings = || json!({"type": "array", "items": {"type": "string"}});
    let only = |suffix: &str| format!("{suffix} Only works within allowed directories.");
    let mut tools = Map::new();
    let mut add = |name: &str, description: String, properties: Value, required: &[&str]| {
        tools.insert(
            name.to_string(),
            schema(name, &description, properties, required),
        );
    };
    add(
        "read_file",
        only(
            "Read the complete contents of a file from the file system. Handles various text \
             encodings and provides detailed error messages if the file cannot be read. Use \
             this tool when you need to examine the contents of a single file.",
        ),
        path(),
        &["path"],
    );
    add(
        "read_multiple_files",
        only(
            "Read the contents of multiple files simultaneously. This is more efficient than \
             reading files one by one when you need to analyze or compare multiple files. Each \
             file's content is returned with its path as a reference. Failed reads for \
             individual files won't stop the entire operation.",
        ),
        json!({"paths": strings()}),
        &["paths"],
    );
    add(
        "write_file",
        only(
            "Create a new file or completely overwrite an existing file with new content. Use \
             with caution as it will overwrite existing files without warning. Handles text \
             content with proper encoding.",
        ),
        json!({"path": {"type": "string"}, "content": {"type": "string"}}),
        &["path", "content"],
    );
    add(
        "edit_file",
        only(
            "Make line-based edits to a text file. Each edit replaces exact line sequences with \
             new content. Returns a git-style diff showing the changes made.",
        ),
        json!({
            "path": {"type": "string"},
            "edits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "oldText": {"type": "string", "description": "Text to search for - must match exactly"},
                        "newText": {"type": "string", "description": "Text to replace with"},
                    },
                    "required": ["oldText", "newText"],
                    "additionalProperties": false,
                },
            },
            "dryRun": {"type": "boolean", "default": false, "description": "Preview changes using git-style diff format"},
        }),
        &["path", "edits"],
    );
    add(
        "create_directory",
        only(
            "Create a new directory or ensure a directory exists. Can create multiple nested \
             directories in one operation. If the directory already exists, this operation \
             will succeed silently. Perfect for setting up directory structures for projects \
             or ensuring required paths exist.",
        ),
        path(),
        &["path"],
    );
    add(
        "list_directory",
        only(
            "Get a detailed listing of all files and directories in a specified path. Results \
             clearly distinguish between files and directories with [FILE] and [DIR] prefixes. \
             This tool is essential for understanding directory structure and finding specific \
             files within a directory.",
        ),
        path(),
        &["path"],
    );
    add(
        "directory_tree",
        only(
            "Get a recursive tree view of files and directories as a JSON structure. Each entry \
             includes 'name', 'type' (file/directory), and 'children' for directories. Files \
             have no children array, while directories always have a children array (which may \
             be empty). The output is formatted with 2-space indentation for readability.",
        ),
        path(),
        &["path"],
    );
    add(
        "move_file",
        "Move or rename files and directories. Can move files between directories and rename \
         them in a single operation. If the destination exists, the operation will fail. Works \
         across different directories and can be used for simple renaming within the same \
         directory. Both source and destination must be within allowed directories."
            .to_string(),
        json!({"source": {"type": "string"}, "destination": {"type": "string"}}),
        &["source", "destination"],
    );
    add(
        "search_files",
        "Recursively search for files and directories matching a pattern. Searches through all \
         subdirectories from the starting path. The search is case-insensitive and matches \
         partial names; a pattern with '*', '?' or '[' is matched as a glob. Returns full paths \
         to all matching items. Great for finding files when you don't know their exact \
         location. Only searches within allowed directories."
            .to_string(),
        json!({
            "path": {"type": "string"},
            "pattern": {"type": "string"},
            "excludePatterns": {"type": "array", "items": {"type": "string"}, "default": []},
        }),
        &["path", "pattern"],
    );
    add(
        "get_file_info",
        only(
            "Retrieve detailed metadata about a file or directory. Returns comprehensive \
             information including size, creation time, last modified time, permissions, and \
             type. This tool is perfect for understanding file characteristics without reading \
             the actual content.",
        ),
        path(),
        &["path"],
    );
    add(
        "list_allowed_directories",
        "Returns the list of directories that this server is allowed to access. Use this to \
         understand which directories are available before trying to access files."
            .to_string(),
        json!({}),
        &[],
    );
    Value::Object(tools)
}

/// Why a tool call did not give its text.
enum Failure {
    /// The sandbox is gone: the RPC fails, as for every tool.
    Gone(ApiError),
    /// The tool failed: an `isError` result with this message.
    Tool(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Tool(message)
    }
}

/// A core error of operation `op` (Node's name of it, e.g. `open`, `scandir`) on `path`, in
/// the words of upstream's Node server where they differ.
fn failure(e: CoreError, op: &str, path: &str) -> Failure {
    match &e {
        CoreError::NotFound(_) => Failure::Gone(e.into()),
        CoreError::Agent(a) => Failure::Tool(match a.kind {
            AgentErrorKind::NotFound => {
                format!("ENOENT: no such file or directory, {op} '{path}'")
            }
            AgentErrorKind::AlreadyExists => format!("EEXIST: file already exists, {op} '{path}'"),
            AgentErrorKind::PathOutsideSandbox => {
                "Access denied - symlink target outside allowed directories".to_string()
            }
            _ => a.message.clone(),
        }),
        // Through the edge's error type: an internal error's detail and a host path stay in
        // the log.
        _ => Failure::Tool(ApiError::from(e).message),
    }
}

/// The absolute, normalized path `p` names (relative paths are taken from `/workspace`, `..`
/// applied lexically), or upstream's refusal when it is not inside `/workspace`.
pub fn check_path(p: &str) -> Result<String, String> {
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{ALLOWED_DIR}/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let abs = format!("/{}", parts.join("/"));
    let inside = abs
        .strip_prefix(ALLOWED_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if inside {
        Ok(abs)
    } else {
        Err(format!(
            "Access denied - path outside allowed directories: {abs} not in {ALLOWED_DIR}"
        ))
    }
}

/// One edit of `edit_file`.
#[derive(Debug, Clone, Deserialize)]
pub struct Edit {
    /// Text to replace.
    #[serde(rename = "oldText")]
    pub old_text: String,
    /// Its replacement.
    #[serde(rename = "newText")]
    pub new_text: String,
}

fn normalize_line_endings(s: &str) -> String {
    s.replace("\r\n", "\n")
}

fn leading_whitespace(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// Apply `edits` in order to `content` (line endings normalized to `\n`), as upstream does:
/// the first exact occurrence of an edit's text is replaced; failing that, a run of lines
/// equal to it but for surrounding whitespace is, keeping the first line's indentation and
/// the others' indentation relative to it.
pub fn apply_edits(content: &str, edits: &[Edit]) -> Result<String, String> {
    let mut modified = normalize_line_endings(content);
    for edit in edits {
        let old = normalize_line_endings(&edit.old_text);
        let new = normalize_line_endings(&edit.new_text);
        if modified.contains(&old) {
            modified = modified.replacen(&old, &new, 1);
            continue;
        }
        let old_lines: Vec<&str> = old.split('\n').collect();
        let lines: Vec<&str> = modified.split('\n').collect();
        let found = (0..(lines.len() + 1).saturating_sub(old_lines.len())).find(|&i| {
            old_lines
                .iter()
                .zip(&lines[i..])
                .all(|(o, l)| o.trim() == l.trim())
        });
        let Some(i) = found else {
            return Err(format!(
                "Could not find exact match for edit:\n{}",
                edit.old_text
            ));
        };
        let indent = leading_whitespace(lines[i]);
        let replacement: Vec<String> = new
            .split('\n')
            .enumerate()
            .map(|(j, line)| {
                if j == 0 {
                    return format!("{indent}{}", line.trim_start());
                }
                let old_indent = old_lines.get(j).map_or("", |l| leading_whitespace(l));
                let new_indent = leading_whitespace(line);
                if old_indent.is_empty() || new_indent.is_empty() {
                    return line.to_string();
                }
                let extra = new_indent.len().saturating_sub(old_indent.len());
                format!("{indent}{}{}", " ".repeat(extra), line.trim_start())
            })
            .collect();
        let mut out: Vec<String> = lines[..i].iter().map(|l| l.to_string()).collect();
        out.extend(replacement);
        out.extend(lines[i + old_lines.len()..].iter().map(|l| l.to_string()));
        modified = out.join("\n");
    }
    Ok(modified)
}

/// A unified diff of `old` and `new` with `path` as both names, in the shape of jsdiff's
/// `createTwoFilesPatch(path, path, old, new, "original", "modified")`.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    let mut out = vec![
        format!("Index: {path}"),
        "=".repeat(67),
        format!("--- {path}\toriginal"),
        format!("+++ {path}\tmodified"),
    ];
    let diff = TextDiff::from_lines(old, new);
    for group in diff.grouped_ops(DIFF_CONTEXT) {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let range = |start: usize, end: usize| {
            let len = end - start;
            // An empty range names the line before it.
            let start = if len == 0 { start } else { start + 1 };
            format!("{start},{len}")
        };
        out.push(format!(
            "@@ -{} +{} @@",
            range(first.old_range().start, last.old_range().end),
            range(first.new_range().start, last.new_range().end),
        ));
        for op in &group {
            for change in diff.iter_changes(op) {
                let sign = match change.tag() {
                    ChangeTag::Equal => ' ',
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                };
                let line = change.value();
                out.push(format!("{sign}{}", line.strip_suffix('\n').unwrap_or(line)));
                if change.missing_newline() {
                    out.push("\\ No newline at end of file".to_string());
                }
            }
        }
    }
    out.join("\n") + "\n"
}

/// `edit_file`'s answer: the diff in a fenced block whose fence no line of it contains.
fn fenced_diff(diff: &str) -> String {
    let mut n = 3;
    while diff.contains(&"`".repeat(n)) {
        n += 1;
    }
    let fence = "`".repeat(n);
    format!("{fence}diff\n{diff}{fence}\n\n")
}

/// Whether `text` matches the glob `pattern` (minimatch with `dot: true`): `/`-separated
/// components, `**` alone in a component for any number of components (at least one when it
/// ends the pattern), and within one
/// component `*`, `?`, `[...]` (`[!...]` or `[^...]` negated, `a-z` ranges) and `\` escapes.
pub fn glob_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let fold = |s: &str| {
        if ignore_case {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let (pattern, text) = (fold(pattern), fold(text));
    let p: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let t: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
    // matches[i][j]: p[i..] matches t[j..]; filled from the end, so no backtracking blows up.
    let mut matches = vec![vec![false; t.len() + 1]; p.len() + 1];
    matches[p.len()][t.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=t.len()).rev() {
            matches[i][j] = if p[i] == "**" && i + 1 == p.len() {
                // A final `**` takes at least one component (`a/**` is not `a`), as minimatch.
                j < t.len()
            } else if p[i] == "**" {
                matches[i + 1][j] || (j < t.len() && matches[i][j + 1])
            } else {
                j < t.len() && component_match(p[i], t[j]) && matches[i + 1][j + 1]
            };
        }
    }
    matches[0][0]
}

/// One token of a glob component.
enum Token {
    Char(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

fn tokens(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => out.push(Token::AnyRun),
            '?' => out.push(Token::AnyChar),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push(Token::Char(chars[i]));
            }
            '[' => {
                let mut j = i + 1;
                let negated = matches!(chars.get(j), Some('!' | '^'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                // A `]` right after the opening is a member, not the end.
                let start = j;
                while j < chars.len() && (chars[j] != ']' || j == start) {
                    if j + 2 < chars.len() && chars[j + 1] == '-' && chars[j + 2] != ']' {
                        ranges.push((chars[j], chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((chars[j], chars[j]));
                        j += 1;
                    }
                }
                if j < chars.len() {
                    out.push(Token::Class { negated, ranges });
                    i = j;
                } else {
                    // No closing `]`: a literal `[`.
                    out.push(Token::Char('['));
                }
            }
            c => out.push(Token::Char(c)),
        }
        i += 1;
    }
    out
}

fn component_match(pattern: &str, text: &str) -> bool {
    let p = tokens(pattern);
    let t: Vec<char> = text.chars().collect();
    let one = |tok: &Token, c: char| match tok {
        Token::Char(x) => *x == c,
        Token::AnyChar => true,
        Token::AnyRun => unreachable!("runs are handled by the caller"),
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != *negated
        }
    };
    // Greedy with one backtrack point: the last `*` and where its run would end.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && matches!(p[pi], Token::AnyRun) {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && one(&p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|tok| matches!(tok, Token::AnyRun))
}

/// Whether a search `pattern` matches an entry named `name` at `rel` below the search root.
fn search_matches(pattern: &str, name: &str, rel: &str) -> bool {
    if name.to_lowercase().contains(&pattern.to_lowercase()) {
        return true;
    }
    if !pattern.contains(['*', '?', '[']) {
        return false;
    }
    if pattern.contains('/') {
        glob_match(pattern, rel, true)
    } else {
        glob_match(pattern, name, true)
    }
}

/// Whether `rel` is excluded by upstream's rule: a pattern with `*` is a glob on the path
/// below the search root, any other is `**/<pattern>/**`.
fn excluded(patterns: &[String], rel: &str) -> bool {
    patterns.iter().any(|p| {
        if p.contains('*') {
            glob_match(p, rel, false)
        } else {
            glob_match(&format!("**/{p}/**"), rel, false)
        }
    })
}

/// A time (milliseconds since the epoch) the way JavaScript's `Date` prints itself, in UTC:
/// `Wed Jan 15 2025 10:23:45 GMT+0000 (Coordinated Universal Time)`.
pub fn js_date(ms: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    let weekday = (days.rem_euclid(7) + 4) % 7;
    format!(
        "{} {} {day:02} {year:04} {:02}:{:02}:{:02} GMT+0000 (Coordinated Universal Time)",
        DAYS[weekday as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

/// `get_file_info`'s text.
fn file_info(e: &FileEntry) -> String {
    let time = js_date(e.mtime_ms);
    [
        format!("size: {}", e.size),
        format!("created: {time}"),
        format!("modified: {time}"),
        format!("accessed: {time}"),
        format!("isDirectory: {}", e.kind == EntryKind::Dir),
        format!("isFile: {}", e.kind == EntryKind::File),
        format!("permissions: {:03o}", e.mode & 0o777),
    ]
    .join("\n")
}

/// One node of `directory_tree` (fields in upstream's order).
#[derive(Debug, Serialize)]
struct TreeNode {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    children: Option<Vec<TreeNode>>,
}

/// The tree of a listing of `root` (parents before children).
fn tree(root: &str, entries: &[FileEntry]) -> Vec<TreeNode> {
    fn children(parent: &str, entries: &[FileEntry]) -> Vec<TreeNode> {
        let prefix = format!("{parent}/");
        entries
            .iter()
            .filter(|e| {
                e.path
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .map(|e| {
                let dir = e.kind == EntryKind::Dir;
                TreeNode {
                    name: e.name.clone(),
                    kind: if dir { "directory" } else { "file" },
                    children: dir.then(|| children(&e.path, entries)),
                }
            })
            .collect()
    }
    children(root.trim_end_matches('/'), entries)
}

#[derive(Deserialize)]
struct PathArgs {
    path: String,
}

#[derive(Deserialize)]
struct PathsArgs {
    paths: Vec<String>,
}

#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize)]
struct EditArgs {
    path: String,
    edits: Vec<Edit>,
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

#[derive(Deserialize)]
struct MoveArgs {
    source: String,
    destination: String,
}

#[derive(Deserialize)]
struct SearchArgs {
    path: String,
    pattern: String,
    #[serde(default, rename = "excludePatterns")]
    exclude_patterns: Vec<String>,
}

/// A tool's arguments; unknown ones are ignored, as upstream's schemas do.
fn parse<T: DeserializeOwned>(tool: &str, args: &Map<String, Value>) -> Result<T, Failure> {
    serde_json::from_value(Value::Object(args.clone()))
        .map_err(|e| Failure::Tool(format!("Invalid arguments for {tool}: {e}")))
}

/// The MCP `CallToolResult` of a filesystem tool: one text.
fn result(text: String, is_error: bool) -> Value {
    json!({
        "meta": null,
        "content": [{"type": "text", "text": text, "annotations": null, "meta": null}],
        "structuredContent": null,
        "isError": is_error,
    })
}

/// Call filesystem tool `name` (one of [`NAMES`]) of sandbox `id`. A failing tool is an
/// `isError` result; `Err` only when the sandbox is gone.
pub async fn call(
    manager: &Manager,
    id: &str,
    name: &str,
    args: &Map<String, Value>,
) -> Result<Value, ApiError> {
    match (Files { manager, id }).run(name, args).await {
        Ok(text) => Ok(result(text, false)),
        Err(Failure::Tool(message)) => Ok(result(format!("Error: {message}"), true)),
        Err(Failure::Gone(e)) => Err(e),
    }
}

/// The file operations of one sandbox.
struct Files<'a> {
    manager: &'a Manager,
    id: &'a str,
}

impl Files<'_> {
    async fn run(&self, name: &str, args: &Map<String, Value>) -> Result<String, Failure> {
        match name {
            "read_file" => {
                let a: PathArgs = parse(name, args)?;
                self.read(&check_path(&a.path)?).await
            }
            "read_multiple_files" => {
                let a: PathsArgs = parse(name, args)?;
                let reads = a.paths.iter().map(|p| async move {
                    match check_path(p).map_err(Failure::Tool) {
                        Ok(abs) => self.read(&abs).await,
                        Err(e) => Err(e),
                    }
                });
                let mut parts = Vec::new();
                for (p, r) in a.paths.iter().zip(futures::future::join_all(reads).await) {
                    parts.push(match r {
                        Ok(content) => format!("{p}:\n{content}\n"),
                        Err(Failure::Tool(message)) => format!("{p}: Error - {message}"),
                        Err(gone) => return Err(gone),
                    });
                }
                Ok(parts.join("\n---\n"))
            }
            "write_file" => {
                let a: WriteArgs = parse(name, args)?;
                self.write(&check_path(&a.path)?, a.content).await?;
                Ok(format!("Successfully wrote to {}", a.path))
            }
            "edit_file" => {
                let a: EditArgs = parse(name, args)?;
                let abs = check_path(&a.path)?;
                let original = normalize_line_endings(&self.read(&abs).await?);
                let modified = apply_edits(&original, &a.edits)?;
                let diff = fenced_diff(&unified_diff(&abs, &original, &modified));
                if !a.dry_run {
                    self.write(&abs, modified).await?;
                }
                Ok(diff)
            }
            "create_directory" => {
                let a: PathArgs = parse(name, args)?;
                let abs = check_path(&a.path)?;
                self.manager
                    .mkdir(self.id, &abs, true)
                    .await
                    .map_err(|e| failure(e, "mkdir", &abs))?;
                Ok(format!("Successfully created directory {}", a.path))
            }
            "list_directory" => {
                let a: PathArgs = parse(name, args)?;
                let entries = self.list(&check_path(&a.path)?, 1).await?;
                let lines: Vec<String> = entries
                    .iter()
                    .map(|e| {
                        let tag = if e.kind == EntryKind::Dir {
                            "[DIR]"
                        } else {
                            "[FILE]"
                        };
                        format!("{tag} {}", e.name)
                    })
                    .collect();
                Ok(lines.join("\n"))
            }
            "directory_tree" => {
                let a: PathArgs = parse(name, args)?;
                let abs = check_path(&a.path)?;
                let entries = self.list(&abs, MAX_DEPTH).await?;
                serde_json::to_string_pretty(&tree(&abs, &entries))
                    .map_err(|e| Failure::Tool(e.to_string()))
            }
            "move_file" => {
                let a: MoveArgs = parse(name, args)?;
                let (from, to) = (check_path(&a.source)?, check_path(&a.destination)?);
                self.manager
                    .move_path(self.id, &from, &to)
                    .await
                    .map_err(|e| failure(e, "rename", &format!("{from}' -> '{to}")))?;
                Ok(format!(
                    "Successfully moved {} to {}",
                    a.source, a.destination
                ))
            }
            "search_files" => {
                let a: SearchArgs = parse(name, args)?;
                let root = check_path(&a.path)?;
                let entries = self.list(&root, MAX_DEPTH).await?;
                let mut found = Vec::new();
                // Entries below an excluded directory are skipped with it (upstream does not
                // descend into it).
                let mut pruned: Vec<String> = Vec::new();
                for e in &entries {
                    let rel = e
                        .path
                        .strip_prefix(&root)
                        .unwrap_or(&e.path)
                        .trim_start_matches('/');
                    if pruned.iter().any(|p| rel.starts_with(p.as_str())) {
                        continue;
                    }
                    if excluded(&a.exclude_patterns, rel) {
                        pruned.push(format!("{rel}/"));
                        continue;
                    }
                    if search_matches(&a.pattern, &e.name, rel) {
                        found.push(e.path.clone());
                    }
                }
                Ok(if found.is_empty() {
                    "No matches found".to_string()
                } else {
                    found.join("\n")
                })
            }
            "get_file_info" => {
                let a: PathArgs = parse(name, args)?;
                let abs = check_path(&a.path)?;
                let entry = self
                    .manager
                    .stat(self.id, &abs)
                    .await
                    .map_err(|e| failure(e, "stat", &abs))?;
                Ok(file_info(&entry))
            }
            "list_allowed_directories" => Ok(format!("Allowed directories:\n{ALLOWED_DIR}")),
            other => Err(Failure::Tool(format!("Unknown tool: {other}"))),
        }
    }

    /// A file's text (invalid UTF-8 replaced, as Node's `utf-8` decoding does).
    async fn read(&self, path: &str) -> Result<String, Failure> {
        let mut pieces = self
            .manager
            .read_file(self.id, path)
            .await
            .map_err(|e| failure(e, "open", path))?;
        let mut data = Vec::new();
        while let Some(piece) = pieces.next().await {
            data.extend(piece.map_err(|e| failure(e, "read", path))?);
            if data.len() > MAX_TEXT_BYTES {
                return Err(Failure::Tool(format!(
                    "{path} is larger than {} MiB; read it through the workspace file routes",
                    MAX_TEXT_BYTES >> 20
                )));
            }
        }
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// Replace a file's content (its mode is kept).
    async fn write(&self, path: &str, content: String) -> Result<(), Failure> {
        let body = futures::stream::once(async move { Ok(content.into_bytes()) });
        self.manager
            .write_file(self.id, path, None, Box::pin(body))
            .await
            .map_err(|e| failure(e, "open", path))?;
        Ok(())
    }

    /// A directory's entries, `depth` levels deep, parents before children.
    async fn list(&self, path: &str, depth: u32) -> Result<Vec<FileEntry>, Failure> {
        self.manager
            .list_dir(self.id, path, depth)
            .await
            .map_err(|e| failure(e, "scandir", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(old: &str, new: &str) -> Edit {
        Edit {
            old_text: old.into(),
            new_text: new.into(),
        }
    }

    #[test]
    fn paths_stay_in_the_workspace() {
        assert_eq!(check_path("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(check_path("").unwrap(), "/workspace");
        assert_eq!(check_path(".").unwrap(), "/workspace");
        assert_eq!(check_path("/workspace/").unwrap(), "/workspace");
        assert_eq!(check_path("/workspace/x/../y").unwrap(), "/workspace/y");
        assert_eq!(check_path("./a//b/./c").unwrap(), "/workspace/a/b/c");
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "/",
            "/workspace2/x",
            "/workspace/../etc",
            "a/../../x",
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(
                e.starts_with("Access denied - path outside allowed directories: /")
                    && e.ends_with(" not in /workspace"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            check_path("../etc/passwd").unwrap_err(),
            "Access denied - path outside allowed directories: /etc/passwd not in /workspace"
        );
    }

    #[test]
    fn edits_exact_then_by_lines() {
        let text = "def f():\n    return 1\n\nprint(f())\n";
        // Exact: the first occurrence only.
        assert_eq!(apply_edits("a a a", &[edit("a", "b")]).unwrap(), "b a a");
        // Sequential: the second edit sees the first's result.
        assert_eq!(
            apply_edits("one two", &[edit("one", "uno"), edit("uno two", "done")]).unwrap(),
            "done"
        );
        // Whitespace-insensitive lines keep the file's indentation.
        let got = apply_edits(text, &[edit(" return 1 ", "x = 2\n  return x")]).unwrap();
        assert_eq!(got, "def f():\n    x = 2\n  return x\n\nprint(f())\n");
        let got = apply_edits(
            "if a:\n        b()\n        c()\n",
            &[edit("  b()\n  c()", "  d()\n    e()")],
        )
        .unwrap();
        assert_eq!(got, "if a:\n        d()\n          e()\n");
        // CRLF is normalized on both sides.
        assert_eq!(
            apply_edits("a\r\nb\r\n", &[edit("a\r\nb", "c")]).unwrap(),
            "c\n"
        );
        let e = apply_edits(text, &[edit("nope", "x")]).unwrap_err();
        assert_eq!(e, "Could not find exact match for edit:\nnope");
        // Longer than the file: no match, no panic.
        assert!(apply_edits("a", &[edit("x\ny\nz", "")]).is_err());
    }

    #[test]
    fn diffs_look_like_jsdiff() {
        let old = "a\nb\nc\n";
        let new = "a\nB\nc\n";
        assert_eq!(
            unified_diff("/workspace/f.txt", old, new),
            "Index: /workspace/f.txt\n\
             ===================================================================\n\
             --- /workspace/f.txt\toriginal\n\
             +++ /workspace/f.txt\tmodified\n\
             @@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        );
        // Four lines of context; far-apart changes make two hunks.
        let old: String = (1..=20).map(|i| format!("l{i}\n")).collect();
        let new = old.replace("l2\n", "two\n").replace("l18\n", "eighteen\n");
        let d = unified_diff("p", &old, &new);
        let hunks: Vec<&str> = d.lines().filter(|l| l.starts_with("@@")).collect();
        assert_eq!(hunks, ["@@ -1,6 +1,6 @@", "@@ -14,7 +14,7 @@"]);
        // A last line without a newline is marked.
        let d = unified_diff("p", "x", "y");
        assert!(
            d.ends_with("@@ -1,1 +1,1 @@\n-x\n\\ No newline at end of file\n+y\n\\ No newline at end of file\n"),
            "{d}"
        );
        // Inserting into an empty file: the empty range names line 0.
        assert!(unified_diff("p", "", "x\n").contains("@@ -0,0 +1,1 @@\n+x\n"));
        assert_eq!(unified_diff("p", "same\n", "same\n").lines().count(), 4);
        assert_eq!(fenced_diff("d\n"), "```diff\nd\n```\n\n");
        assert_eq!(fenced_diff("a ``` b\n"), "````diff\na ``` b\n````\n\n");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.txt", "a.txt", false));
        assert!(!glob_match("*.txt", "d/a.txt", false));
        assert!(glob_match("**/*.txt", "d/e/a.txt", false));
        assert!(glob_match("**/*.txt", "a.txt", false));
        assert!(glob_match(
            "**/node_modules/**",
            "x/node_modules/y/z",
            false
        ));
        assert!(glob_match("**/node_modules/**", "node_modules/y", false));
        assert!(!glob_match("**/node_modules/**", "node_modules", false));
        assert!(glob_match("*", ".hidden", false));
        assert!(glob_match("a?c", "abc", false));
        assert!(!glob_match("a?c", "ac", false));
        assert!(glob_match("[a-c]x", "bx", false));
        assert!(!glob_match("[!a-c]x", "bx", false));
        assert!(glob_match("[]]", "]", false));
        assert!(glob_match("a[", "a[", false));
        assert!(glob_match("\\*", "*", false));
        assert!(!glob_match("\\*", "x", false));
        assert!(glob_match("*.TXT", "a.txt", true));
        assert!(!glob_match("*.TXT", "a.txt", false));
        assert!(glob_match("*a*b*c*", "xxaxxbxxcxx", false));
        assert!(!glob_match("*a*b*c*d", "xxaxxbxxcxx", false));
        // Many globstars against a deep path stay fast.
        let deep = vec!["d"; 200].join("/");
        assert!(glob_match(
            &format!("{}x", "**/".repeat(50)),
            &format!("{deep}/x"),
            false
        ));
        assert!(!glob_match(&format!("{}q", "**/".repeat(50)), &deep, false));
    }

    #[test]
    fn search_and_exclude_rules() {
        assert!(search_matches("READ", "readme.md", "docs/readme.md"));
        assert!(!search_matches("read", "notes.md", "notes.md"));
        assert!(search_matches("*.MD", "notes.md", "a/notes.md"));
        assert!(!search_matches("*.md", "notes.txt", "notes.txt"));
        assert!(search_matches("a/*.md", "n.md", "a/n.md"));
        assert!(!search_matches("a/*.md", "n.md", "b/n.md"));
        let ex = vec!["node_modules".to_string(), "*.log".to_string()];
        assert!(excluded(&ex, "node_modules/x"));
        assert!(excluded(&ex, "a/node_modules/x"));
        assert!(excluded(&ex, "x.log"));
        assert!(!excluded(&ex, "a/x.log"));
        assert!(!excluded(&ex, "src/main.rs"));
    }

    #[test]
    fn dates_and_file_info() {
        assert_eq!(
            js_date(0),
            "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js_date(1_741_096_987_123),
            "Tue Mar 04 2025 14:03:07 GMT+0000 (Coordinated Universal Time)"
        );
        assert_eq!(
            js_date(951_782_400_000),
            "Tue Feb 29 2000 00:00:00 GMT+0000 (Coordinated Universal Time)"
        );
        let e = FileEntry {
            path: "/workspace/a".into(),
            name: "a".into(),
            kind: EntryKind::File,
            size: 5,
            mode: 0o4755,
            mtime_ms: 0,
            target: None,
        };
        let info = file_info(&e);
        let keys: Vec<&str> = info.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "size",
                "created",
                "modified",
                "accessed",
                "isDirectory",
                "isFile",
                "permissions"
            ]
        );
        assert!(info.starts_with("size: 5\ncreated: Thu Jan 01 1970"));
        assert!(info.ends_with("isDirectory: false\nisFile: true\npermissions: 755"));
    }

    #[test]
    fn trees() {
        let entry = |path: &str, dir: bool| FileEntry {
            path: path.into(),
            name: path.rsplit('/').next().unwrap().into(),
            kind: if dir { EntryKind::Dir } else { EntryKind::File },
            size: 0,
            mode: 0o644,
            mtime_ms: 0,
            target: None,
        };
        let entries = [
            entry("/workspace/a", true),
            entry("/workspace/a/b.txt", false),
            entry("/workspace/a/e", true),
            entry("/workspace/c.txt", false),
        ];
        let got = serde_json::to_string_pretty(&tree("/workspace", &entries)).unwrap();
        assert_eq!(
            got,
            r#"[
  {
    "name": "a",
    "type": "directory",
    "children": [
      {
        "name": "b.txt",
        "type": "file"
      },
      {
        "name": "e",
        "type": "directory",
        "children": []
      }
    ]
  },
  {
    "name": "c.txt",
    "type": "file"
  }
]"#
        );
        assert_eq!(
            serde_json::to_string_pretty(&tree("/workspace/", &[])).unwrap(),
            "[]"
        );
    }

    #[test]
    fn schemas_list_every_tool() {
        let t = tools();
        let names: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = NAMES.to_vec();
        want.sort();
        assert_eq!(names, want);
        let edit = &t["edit_file"]["json_schema"]["function"];
        assert_eq!(edit["parameters"]["required"], json!(["path", "edits"]));
        assert_eq!(
            edit["parameters"]["properties"]["edits"]["items"]["required"],
            json!(["oldText", "newText"])
        );
        let none = &t["list_allowed_directories"]["json_schema"]["function"]["parameters"];
        assert_eq!(
            none,
            &json!({"type": "object", "properties": {}, "required": []})
        );
    }
}
