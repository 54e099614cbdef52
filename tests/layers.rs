//! The house rules that the compiler does not keep, read from the sources.
//!
//! 1. **Layers.** Inside each crate, the top-level modules (each file or folder directly
//!    under `src/`) form layers: taking every `crate::x` named in a module's non-test code
//!    as an arrow from that module to `x`, there is no circle. A circle means neither module
//!    can be read, tested or replaced without the other.
//! 2. **Sans-IO cores.** The protocol cores listed in [`SANS_IO`] take `now` and an input
//!    and return what to do: they read no clock and touch no socket, thread or runtime.
//!
//! `docs/contributing.md` says why; `scripts/layers` runs this file alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The crates whose modules must form layers.
const CRATES: [&str; 4] = ["proto", "service-kit", "mediaproxy", "signaling"];

/// Modules (paths under the workspace root, a folder meaning every file below it) that must
/// stay free of I/O, with the words that would break that.
const SANS_IO: [&str; 12] = [
    "signaling/src/call",
    "signaling/src/transaction",
    "signaling/src/dialog.rs",
    "signaling/src/sip",
    "signaling/src/sdp.rs",
    "signaling/src/timer.rs",
    "mediaproxy/src/session.rs",
    "mediaproxy/src/session",
    "mediaproxy/src/quality.rs",
    "mediaproxy/src/rtp.rs",
    "mediaproxy/src/audio",
    "proto/src/domain.rs",
];

/// What a sans-IO module may not name: clocks, sockets, threads, the async runtime, gRPC,
/// and the modules that hold the command line, a gRPC client or server, or the driver.
const IO_WORDS: [&str; 18] = [
    "Instant::now",
    "SystemTime::now",
    "tokio::",
    "tonic::",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "std::thread",
    "std::fs",
    "std::net::ToSocketAddrs",
    "rusqlite",
    "postgres::",
    "clap::",
    "crate::config",
    "crate::media::",
    "crate::grpc",
    "crate::server",
    "crate::driver",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Files that only tests compile: `#[cfg(test)] mod name;` in their parent, as `name.rs` or
/// as the folder `name/` with everything in it.
fn test_only_files(files: &[PathBuf]) -> TestOnly {
    let mut test_only = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(file).expect("source file");
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if pair[0] != "#[cfg(test)]" {
                continue;
            }
            let Some(name) = pair[1]
                .trim_start_matches("pub(crate) ")
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            let stem = file.file_stem().expect("file name");
            let dir = if stem == "mod" || stem == "lib" || stem == "main" {
                file.parent().expect("parent").to_path_buf()
            } else {
                file.with_extension("")
            };
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(name));
        }
    }
    TestOnly(test_only)
}

/// Test-only files and folders.
struct TestOnly(BTreeSet<PathBuf>);

impl TestOnly {
    fn contains(&self, file: &Path) -> bool {
        self.0.iter().any(|place| file.starts_with(place))
    }
}

/// The source without comments, string contents and `#[cfg(test)]` items, as (line number,
/// line) pairs: what the crate compiles outside tests.
fn production_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut pending_test_item = false;
    for (index, raw) in text.lines().enumerate() {
        let line = strip_comment_and_strings(raw);
        let trimmed = line.trim();
        if skip_depth.is_none() && trimmed == "#[cfg(test)]" {
            pending_test_item = true;
            continue;
        }
        let opens = line.matches('{').count() as i32;
        let closes = line.matches('}').count() as i32;
        if pending_test_item {
            pending_test_item = false;
            if trimmed.ends_with(';') {
                continue;
            }
            if opens > closes {
                skip_depth = Some(depth);
                depth += opens - closes;
                continue;
            }
            if trimmed.starts_with('#') {
                // Another attribute of the same item.
                pending_test_item = true;
            }
            continue;
        }
        depth += opens - closes;
        if let Some(start) = skip_depth {
            if depth <= start {
                skip_depth = None;
            }
            continue;
        }
        out.push((index + 1, line));
    }
    out
}

/// The line without its `//` comment and with string literals emptied (they may hold
/// `crate::` or `tokio::` as words).
fn strip_comment_and_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_string = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            // A char literal such as '"' or '{' must not open a string or a block.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if let Some(escaped) = rest.strip_prefix('\\') {
                    if let Some(end) = escaped.find('\'') {
                        for _ in 0..end + 2 {
                            chars.next();
                        }
                        continue;
                    }
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.next();
                    chars.next();
                    continue;
                }
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules `crate::` names on one line (`crate::a::b`, `crate::{a, b::c}`).
fn named_modules(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c == '$' || c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        item_start = false;
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        names.push(name);
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

/// The top-level module a file belongs to (None for the crate root and binaries).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).expect("file under src");
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    if relative.components().count() == 1 {
        let stem = first.trim_end_matches(".rs").to_owned();
        return (stem != "lib" && stem != "main").then_some(stem);
    }
    (first != "bin").then_some(first)
}

/// Arrows between the top-level modules of one crate, each with where it was seen.
type Arrows = BTreeMap<(String, String), String>;

fn arrows(crate_dir: &Path) -> Arrows {
    let src = crate_dir.join("src");
    let files = rust_files(&src);
    let test_only = test_only_files(&files);
    let mut arrows = Arrows::new();
    for file in files.iter().filter(|f| !test_only.contains(f)) {
        let Some(from) = top_module(&src, file) else {
            continue;
        };
        let text = fs::read_to_string(file).expect("source file");
        for (number, line) in production_lines(&text) {
            for to in named_modules(&line) {
                if to != from && to != "self" && to != "super" {
                    let place = format!(
                        "{}:{number}",
                        file.strip_prefix(workspace()).unwrap_or(file).display()
                    );
                    arrows.entry((from.clone(), to)).or_insert(place);
                }
            }
        }
    }
    arrows
}

/// The circles among `arrows`: each strongly connected set of two or more modules, with the
/// arrows inside it.
fn circles(arrows: &Arrows) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = arrows.keys().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for ((a, b), _) in arrows.range((node.clone(), String::new())..) {
                if *a != node {
                    break;
                }
                if seen.insert(b.clone()) {
                    stack.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reaches(n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in &nodes {
        if done.contains(*node) {
            continue;
        }
        let component: BTreeSet<String> = reach[node]
            .iter()
            .filter(|other| reach[other].contains(*node))
            .cloned()
            .collect();
        if component.len() < 2 {
            continue;
        }
        let mut lines = Vec::new();
        for ((a, b), place) in arrows {
            if component.contains(a) && component.contains(b) {
                lines.push(format!("{a} -> {b} ({place})"));
            }
        }
        done.extend(component);
        found.push(lines);
    }
    found
}

#[test]
fn the_top_level_modules_of_every_crate_form_layers() {
    let mut report = String::new();
    for name in CRATES {
        for circle in circles(&arrows(&workspace().join(name))) {
            report.push_str(&format!("{name}: a circle of imports:\n"));
            for line in circle {
                report.push_str(&format!("    {line}\n"));
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn the_protocol_cores_read_no_clock_and_touch_no_io() {
    let root = workspace();
    let mut report = String::new();
    for module in SANS_IO {
        let path = root.join(module);
        let files = if path.is_dir() {
            rust_files(&path)
        } else {
            vec![path.clone()]
        };
        // A folder's test files may be declared by the module file beside it
        // (`session/tests.rs` by `#[cfg(test)] mod tests;` in `session.rs`).
        let beside = path.with_extension("rs");
        let mut declaring = files.clone();
        if path.is_dir() && beside.is_file() {
            declaring.push(beside);
        }
        let test_only = test_only_files(&declaring);
        for file in files.iter().filter(|f| !test_only.contains(f)) {
            let text = fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("{}: {e} (SANS_IO names it)", file.display()));
            for (number, line) in production_lines(&text) {
                for word in IO_WORDS.iter().filter(|w| line.contains(*w)) {
                    let place = file.strip_prefix(&root).unwrap_or(file).display();
                    report.push_str(&format!("{place}:{number}: names {word}\n"));
                }
            }
        }
    }
    assert!(report.is_empty(), "sans-IO modules doing I/O:\n{report}");
}

#[test]
fn the_checker_sees_arrows_in_every_form_and_skips_tests_and_comments() {
    assert_eq!(named_modules("use crate::call::Output;"), ["call"]);
    assert_eq!(
        named_modules("use crate::{media::{A, B}, cdr::Row, sip};"),
        ["media", "cdr", "sip"]
    );
    assert_eq!(
        named_modules("let x = crate::metrics::render(&r);"),
        ["metrics"]
    );
    assert!(named_modules("pub(crate) fn f() {}").is_empty());
    assert!(named_modules("$crate::x!()").is_empty());
    let source = "use crate::a::X; // crate::b\nlet s = \"crate::c\";\n#[cfg(test)]\nmod tests {\n    use crate::d::Y;\n}\nuse crate::e::Z;\n";
    let seen: Vec<String> = production_lines(source)
        .iter()
        .flat_map(|(_, line)| named_modules(line))
        .collect();
    assert_eq!(seen, ["a", "e"]);
    let mut arrows = Arrows::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        arrows.insert((a.into(), b.into()), String::new());
    }
    assert_eq!(circles(&arrows).len(), 1);
    arrows.remove(&("c".into(), "a".into()));
    assert!(circles(&arrows).is_empty());
}

#[test]
fn a_test_module_declared_as_a_folder_is_test_code_with_everything_in_it() {
    let dir = std::env::temp_dir().join(format!("layers-self-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("call/tests")).unwrap();
    fs::write(dir.join("call.rs"), "mod flow;\n#[cfg(test)]\nmod tests;\n").unwrap();
    fs::write(dir.join("call/flow.rs"), "use crate::media::X;\n").unwrap();
    fs::write(dir.join("call/tests/mod.rs"), "mod basic;\n").unwrap();
    fs::write(dir.join("call/tests/basic.rs"), "use std::fs;\n").unwrap();
    let files = rust_files(&dir);
    let test_only = test_only_files(&files);
    assert!(test_only.contains(&dir.join("call/tests/mod.rs")));
    assert!(test_only.contains(&dir.join("call/tests/basic.rs")));
    assert!(!test_only.contains(&dir.join("call/flow.rs")));
    assert!(!test_only.contains(&dir.join("call.rs")));
    fs::remove_dir_all(&dir).unwrap();
}
