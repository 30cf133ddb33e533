//! The dependency rule of DESIGN.md, checked on the source: `http -> signal -> room -> model`,
//! `signal -> rtc -> forward`, `signal -> turn_server` (a leaf, like the TURN server is a
//! service of its own), `signal -> cluster -> {room, rtc}`; nothing imports `http`; `signal` takes what it needs without
//! importing `app`; `room/` and `rtc/` never import `signal`; `forward/` imports nothing of
//! the crate but itself and `model`; only `rtc/` names the WebRTC stack (str0m), and its files
//! stay short enough to read.
//!
//! A plain text check of `crate::` paths (and `super::` cannot leave a module's folder here),
//! so a wrong-way import fails this test with the file and line to fix.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` a file under `src/<part>` (a folder or a `.rs` file) names, where
/// `<module>` is not in `allowed`, as "file:line: text".
fn violations(part: &str, allowed: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let dir = src.join(part);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    } else {
        files.push(src.join(format!("{part}.rs")));
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (i, _) in code.match_indices("crate::") {
                // `sfu::crate::` does not exist; skip `$crate::` in macros.
                if code[..i].ends_with('$') {
                    continue;
                }
                let module: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !allowed.contains(&module.as_str()) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    found
}

fn assert_clean(part: &str, allowed: &[&str]) {
    let found = violations(part, allowed);
    assert!(
        found.is_empty(),
        "src/{part} may only import crate::{{{}}}; found:\n{}",
        allowed.join(", "),
        found.join("\n")
    );
}

/// Modules every layer may use: leaf utilities that import no layer themselves.
const LEAVES: &[&str] = &["model", "config", "metrics", "auth"];

#[test]
fn room_imports_neither_signal_nor_rtc_nor_http() {
    assert_clean("room", &[LEAVES, &["room"]].concat());
}

#[test]
fn rtc_imports_neither_signal_nor_room_nor_http() {
    assert_clean("rtc", &[LEAVES, &["rtc", "forward"]].concat());
}

#[test]
fn signal_imports_neither_http_nor_app() {
    assert_clean(
        "signal",
        &[LEAVES, &["signal", "room", "rtc", "turn_server", "cluster"]].concat(),
    );
}

#[test]
fn cluster_imports_neither_signal_nor_http() {
    assert_clean("cluster", &[LEAVES, &["cluster", "room", "rtc"]].concat());
}

#[test]
fn turn_server_imports_only_leaves() {
    assert_clean("turn_server", LEAVES);
}

#[test]
fn forward_imports_only_itself_and_model() {
    assert_clean("forward", &["forward", "model"]);
}

#[test]
fn model_imports_nothing_of_the_crate() {
    assert_clean("model", &[]);
}

/// Every source file under `src/`, as (path relative to src, text).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
            let rel = f.strip_prefix(&src).unwrap_or(&f).display().to_string();
            (rel, text)
        })
        .collect()
}

#[test]
fn only_rtc_names_the_webrtc_stack() {
    let found: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("rtc/"))
        .flat_map(|(rel, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.split("//").next().unwrap_or_default().contains("str0m"))
                .map(|(n, l)| format!("src/{rel}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        found.is_empty(),
        "only src/rtc may name str0m; found:\n{}",
        found.join("\n")
    );
}

/// A file of `rtc/` reads top-down in a screen or two: the worker grew to 1.7k lines once.
const MAX_RTC_FILE_LINES: usize = 600;

#[test]
fn rtc_files_stay_short() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(rel, _)| rel.starts_with("rtc/"))
        .filter(|(_, text)| text.lines().count() > MAX_RTC_FILE_LINES)
        .map(|(rel, text)| format!("src/{rel}: {} lines", text.lines().count()))
        .collect();
    assert!(
        long.is_empty(),
        "split these by job (at most {MAX_RTC_FILE_LINES} lines): {long:?}"
    );
}
