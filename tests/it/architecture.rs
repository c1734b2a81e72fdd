//! The layering the build checks (docs/ARCHITECTURE.md, "Architecture invariants").
//!
//! Reads each library crate's `Cargo.toml` and scans its `src/` for what it may not name:
//! Kafka (`rdkafka`) only in `infra/`; SQL (`sqlx`) only in `infra/` and `projections/` (read
//! models own their SQL); HTTP server types (`axum`, `hyper`, `http::`, `StatusCode`,
//! `tower_http`) only in `api/`; SCIM errors in `commands/` carry a kind, never an HTTP status
//! number; `domain/` has no I/O crate; `crypto/` no runtime, network, randomness or clock.
//! Between the workspace crates, only the edges of [`CRATE_GRAPH`] are allowed, and every
//! workspace member must have its place in it. A broken rule fails with `file:line` and the
//! rule's reason.
//!
//! The `quantus` binary (`src/`) is the composition root (CLI, benches, servers) and is not
//! checked. Only `std`: `rustc --edition 2021 --test tests/it/architecture.rs` builds it alone
//! (set `QUANTUS_ROOT` to the checkout to check).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Crates that do I/O: the functional core names none of them.
const IO_CRATES: &[&str] = &[
    "tokio",
    "sqlx",
    "rdkafka",
    "reqwest",
    "axum",
    "hyper",
    "hyper-util",
    "tower",
    "tower-http",
    "object_store",
];

/// HTTP server types: `api/` alone speaks HTTP.
const HTTP_TOKENS: &[&str] = &["axum", "hyper", "hyper_util", "tower_http", "StatusCode"];

/// Which workspace crate may depend on which (`[dependencies]`, by directory): the layers
/// point down, towards the pure core. `crypto/` is the bottom (customers embed it alone);
/// `domain/` uses its signed notes and keys; `infra/` stores the domain's events; `commands/`
/// (writes) and `projections/` (reads) sit side by side on `infra/` and never use each other;
/// `api/` composes both. The `quantus` binary (`src/`) is the composition root and may use all.
const CRATE_GRAPH: &[(&str, &[&str])] = &[
    ("crypto", &[]),
    ("domain", &["crypto"]),
    ("infra", &["domain", "crypto"]),
    ("commands", &["domain", "infra", "crypto"]),
    ("projections", &["domain", "infra"]),
    (
        "api",
        &["domain", "crypto", "infra", "commands", "projections"],
    ),
];

struct Rule {
    krate: &'static str,
    /// Dependencies (`[dependencies]`, not dev-dependencies) the crate may not have.
    deps: Vec<&'static str>,
    /// Identifiers its non-test code may not name, with the reason.
    tokens: Vec<(&'static str, &'static str)>,
    /// Whether a path starting with `http::` is refused too.
    no_http_paths: bool,
    /// Whether clock and randomness calls (`Utc::now`, `Uuid::now_v7`, `Uuid::new_v4`) are.
    pure: bool,
}

/// Calls that read a clock or a random source, refused in `pure` crates after a `::`.
const CLOCK_AND_RANDOM_CALLS: &[&str] = &["now", "now_v7", "new_v4"];

fn rules() -> Vec<Rule> {
    let kafka = ("rdkafka", "Kafka is infra's: use quantus_infra::kafka");
    let sql = (
        "sqlx",
        "SQL belongs to infra/ and to the read models in projections/",
    );
    fn http(t: &'static str) -> (&'static str, &'static str) {
        (t, "HTTP types belong to api/")
    }
    fn io(t: &'static str) -> (&'static str, &'static str) {
        (t, "the core is pure: no I/O")
    }
    let mut domain_tokens: Vec<_> = ["tokio", "sqlx", "rdkafka", "reqwest", "object_store"]
        .into_iter()
        .map(io)
        .collect();
    domain_tokens.extend(HTTP_TOKENS.iter().copied().map(io));
    let randomness = "the core takes randomness from the caller";
    let clock = "the core takes the time from the caller";
    domain_tokens.extend([
        ("rand", randomness),
        ("getrandom", randomness),
        ("thread_rng", randomness),
        ("OsRng", randomness),
        ("SystemTime", clock),
        ("Instant", clock),
    ]);
    let crypto_tokens = domain_tokens.clone();
    let with_http = |mut v: Vec<(&'static str, &'static str)>| {
        v.extend(HTTP_TOKENS.iter().copied().map(http));
        v
    };
    vec![
        Rule {
            krate: "domain",
            deps: [IO_CRATES, &["rand", "getrandom"]].concat(),
            tokens: domain_tokens,
            no_http_paths: true,
            pure: true,
        },
        Rule {
            krate: "crypto",
            deps: [IO_CRATES, &["rand", "getrandom"]].concat(),
            tokens: crypto_tokens,
            no_http_paths: true,
            pure: true,
        },
        Rule {
            krate: "commands",
            deps: vec![
                "rdkafka",
                "sqlx",
                "axum",
                "hyper",
                "hyper-util",
                "http",
                "tower-http",
            ],
            tokens: with_http(vec![kafka, sql]),
            no_http_paths: true,
            pure: false,
        },
        Rule {
            krate: "projections",
            deps: vec![
                "rdkafka",
                "axum",
                "hyper",
                "hyper-util",
                "http",
                "tower-http",
            ],
            tokens: with_http(vec![kafka]),
            no_http_paths: true,
            pure: false,
        },
        Rule {
            krate: "infra",
            // infra/ is an HTTP client of outside services (reqwest), never a server.
            deps: vec!["axum", "hyper-util", "tower-http"],
            tokens: vec![http("axum"), http("hyper_util"), http("tower_http")],
            no_http_paths: false,
            pure: false,
        },
        Rule {
            krate: "api",
            deps: vec!["rdkafka", "sqlx"],
            tokens: vec![kafka, sql],
            no_http_paths: false,
            pure: false,
        },
    ]
}

fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUANTUS_ROOT") {
        return dir.into();
    }
    match option_env!("CARGO_MANIFEST_DIR") {
        Some(dir) => dir.into(),
        None => std::env::current_dir().expect("current dir"),
    }
}

/// The names in `[dependencies]` and `[target.*.dependencies]` (build and dev ones are not
/// shipped with the crate), with their line numbers.
fn dependencies(manifest: &str) -> Vec<(String, usize)> {
    let mut section = String::new();
    let mut found = Vec::new();
    for (i, line) in manifest.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let shipped = section == "dependencies"
            || (section.starts_with("target.") && section.ends_with(".dependencies"));
        if !shipped {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_matches('"');
            // `foo.workspace = true` names `foo`.
            let name = name.split('.').next().unwrap_or(name);
            if !name.is_empty() {
                found.push((name.to_owned(), i + 1));
            }
        }
    }
    found
}

/// The `name` of a manifest's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some(("name", value)) = line.split_once('=').map(|(k, v)| (k.trim(), v)) {
            if in_package {
                return Some(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

/// The directories listed in the root manifest's `[workspace] members`.
fn workspace_members(root_manifest: &str) -> Vec<String> {
    let Some(at) = root_manifest.find("members") else {
        return Vec::new();
    };
    let rest = &root_manifest[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close.max(open + 1)]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// Edges between workspace crates that `graph` does not allow, and members it does not place.
/// `members` are each member's directory with its `Cargo.toml`.
fn crate_graph_violations(members: &[(String, String)], graph: &[(&str, &[&str])]) -> Vec<String> {
    let dir_of: Vec<(String, &str)> = members
        .iter()
        .filter_map(|(dir, manifest)| package_name(manifest).map(|n| (n, dir.as_str())))
        .collect();
    let mut broken = Vec::new();
    for (dir, manifest) in members {
        let Some((_, allowed)) = graph.iter().find(|(d, _)| d == dir) else {
            broken.push(format!(
                "{dir}/Cargo.toml: the workspace crate `{dir}` has no place in CRATE_GRAPH \
                 (tests/it/architecture.rs): say which workspace crates it may depend on"
            ));
            continue;
        };
        for (dep, line) in dependencies(manifest) {
            let Some((_, dep_dir)) = dir_of.iter().find(|(name, _)| *name == dep) else {
                continue;
            };
            if !allowed.contains(dep_dir) {
                let may = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                broken.push(format!(
                    "{dir}/Cargo.toml:{line}: {dir} may not depend on `{dep}` ({dir} -> \
                     {dep_dir}; it may depend on: {may}): the layers point down (CRATE_GRAPH)"
                ));
            }
        }
    }
    broken
}

/// `src` with comments, string and char literals, and `#[cfg(test)]` items blanked (newlines
/// kept, so line numbers hold).
fn code_only(src: &str) -> String {
    let mut code = without_literals(src).into_bytes();
    let attr = b"#[cfg(test)]";
    let mut from = 0;
    while let Some(at) = code[from..].windows(attr.len()).position(|w| w == attr) {
        let start = from + at;
        // The item ends at its first `;` outside braces, or where its first brace closes.
        let (mut depth, mut end) = (0usize, start + attr.len());
        while end < code.len() {
            match code[end] {
                b'{' => depth += 1,
                b'}' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        end += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end += 1;
                    break;
                }
                _ => {}
            }
            end += 1;
        }
        let end = end.min(code.len());
        for c in &mut code[start..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        from = end;
    }
    String::from_utf8(code).expect("blanking keeps UTF-8")
}

/// `src` with comments, string and char literals blanked, newlines kept.
fn without_literals(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'"' || rest.starts_with(b"b\"") {
            let mut j = if rest[0] == b'"' { 1 } else { 2 };
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let j = (j + 1).min(rest.len());
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a) left as it is.
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(len) => {
                    blank(&mut out, &rest[..len]);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            // Whole UTF-8 characters.
            let ch = src[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) starting here.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    let end = s[body..].windows(close.len()).position(|w| w == close)?;
    Some(body + end + close.len())
}

/// Each identifier of `code` with its line (1-based) and whether a `::` follows it and
/// whether one precedes it.
fn identifiers(code: &str) -> Vec<(&str, usize, bool, bool)> {
    let mut found = Vec::new();
    let b = code.as_bytes();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let before = code[..start].trim_end().ends_with("::");
            let after = code[i..].trim_start().starts_with("::");
            // Not the tail of a literal such as 1u16.
            if start == 0 || !b[start - 1].is_ascii_digit() {
                found.push((&code[start..i], line, after, before));
            }
        } else {
            i += 1;
        }
    }
    found
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// HTTP status numbers in SCIM error code of `commands/src/scim`: a three-digit literal
/// 100-599 as a constructor's first argument (`new(412, ..)`) or given to a `status`.
fn scim_status_numbers(code: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let b = code.as_bytes();
    let mut line = 1;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            line += 1;
        }
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if boundary && b[i].is_ascii_digit() {
            let end = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let n: u32 = code[i..end].parse().unwrap_or(0);
            let tail_ok = b
                .get(end)
                .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'.');
            let before = code[..i].trim_end();
            let context = before.ends_with("new(")
                || before.ends_with("status(")
                || before.ends_with("status:")
                || before.ends_with("status =")
                || before.ends_with("status ==");
            if end - i == 3 && (100..600).contains(&n) && tail_ok && context {
                lines.push(line);
            }
            i = end;
            continue;
        }
        i += 1;
    }
    lines
}

/// Every broken rule under `root`, one line each.
pub fn violations(root: &Path) -> Vec<String> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let members: Vec<(String, String)> = workspace_members(&read(root.join("Cargo.toml")))
        .into_iter()
        .map(|dir| {
            let manifest = read(root.join(&dir).join("Cargo.toml"));
            (dir, manifest)
        })
        .collect();
    assert!(!members.is_empty(), "no [workspace] members in Cargo.toml");
    let mut broken = crate_graph_violations(&members, CRATE_GRAPH);
    for rule in rules() {
        let dir = root.join(rule.krate);
        let manifest = read(dir.join("Cargo.toml"));
        for (dep, line) in dependencies(&manifest) {
            if rule.deps.contains(&dep.as_str()) {
                broken.push(format!(
                    "{}/Cargo.toml:{line}: {} may not depend on `{dep}`",
                    rule.krate, rule.krate
                ));
            }
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for file in files {
            let shown = file
                .strip_prefix(root)
                .unwrap_or(&file)
                .display()
                .to_string();
            let src = std::fs::read_to_string(&file).expect("readable source");
            let code = code_only(&src);
            for (ident, line, path_follows, path_precedes) in identifiers(&code) {
                if let Some((_, why)) = rule.tokens.iter().find(|(t, _)| *t == ident) {
                    broken.push(format!("{shown}:{line}: names `{ident}`: {why}"));
                } else if rule.pure && path_precedes && CLOCK_AND_RANDOM_CALLS.contains(&ident) {
                    broken.push(format!(
                        "{shown}:{line}: calls `::{ident}`: the core takes time and randomness \
                         from the caller"
                    ));
                } else if rule.no_http_paths && ident == "http" && path_follows && !path_precedes {
                    broken.push(format!(
                        "{shown}:{line}: names `http::`: HTTP types belong to api/"
                    ));
                }
            }
            if rule.krate == "commands" && shown.contains("scim") {
                for line in scim_status_numbers(&code) {
                    broken.push(format!(
                        "{shown}:{line}: an HTTP status number in SCIM code: give the error a \
                         ScimErrorKind, api/ maps it to the status"
                    ));
                }
            }
        }
    }
    broken
}

#[test]
fn the_crates_keep_their_layers() {
    let root = root();
    assert!(
        root.join("infra/Cargo.toml").exists(),
        "not a Quantus checkout: {}",
        root.display()
    );
    let broken = violations(&root);
    let mut message = String::new();
    for b in &broken {
        let _ = writeln!(message, "  {b}");
    }
    assert!(
        broken.is_empty(),
        "{} architecture rule(s) broken (docs/ARCHITECTURE.md):\n{message}",
        broken.len()
    );
}

#[test]
fn the_checks_can_fail() {
    // Each rule's detector on a small sample, so a rule cannot silently match nothing.
    let code = code_only(
        "use rdkafka::Message; // sqlx::query\nlet s = \"axum::Router\";\nlet r = r#\"StatusCode\"#;\nfn f() -> http::StatusCode { todo!() }\n#[cfg(test)]\nmod tests { use sqlx; fn g() { axum } }\n#[cfg(test)]\nmod more;\nuse tokio;\n",
    );
    let names: Vec<_> = identifiers(&code)
        .into_iter()
        .map(|(i, l, ..)| (i, l))
        .collect();
    assert!(names.contains(&("rdkafka", 1)));
    assert!(names.contains(&("http", 4)) && names.contains(&("StatusCode", 4)));
    assert!(!names.iter().any(|(i, _)| *i == "sqlx" || *i == "axum"));
    assert!(
        !names.contains(&("StatusCode", 3)),
        "raw strings are blanked"
    );
    assert!(
        names.contains(&("tokio", 9)),
        "only the test items are blanked"
    );
    assert!(identifiers("let t = chrono::Utc::now();").contains(&("now", 1, false, true)));
    assert_eq!(
        scim_status_numbers("ScimError::new(412, None, d)\nlet n = 256;\nx.take(400)\n"),
        vec![1]
    );
    let deps = dependencies(
        "[package]\nname = \"x\"\n[dependencies]\nsqlx.workspace = true\ntokio = \"1\"\n[dev-dependencies]\nrdkafka = \"1\"\n",
    );
    assert_eq!(deps, vec![("sqlx".into(), 4), ("tokio".into(), 5)]);

    // The crate graph: an edge it does not list, and a member it does not place.
    assert_eq!(
        workspace_members("[workspace]\nmembers = [\"core\",\n \"web\"]\n"),
        vec!["core", "web"]
    );
    let member = |dir: &str, deps: &str| {
        let manifest = format!("[package]\nname = \"q-{dir}\"\n[dependencies]\n{deps}");
        (dir.to_owned(), manifest)
    };
    let graph: &[(&str, &[&str])] = &[("core", &[]), ("web", &["core"])];
    let broken = crate_graph_violations(
        &[
            member("core", "q-web.workspace = true\n"),
            member("web", "q-core = { path = \"../core\" }\nserde = \"1\"\n"),
            member("extra", ""),
        ],
        graph,
    );
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].starts_with("core/Cargo.toml:4: core may not depend on `q-web`"));
    assert!(broken[1].contains("`extra` has no place in CRATE_GRAPH"));
}
