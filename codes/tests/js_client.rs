//! The JavaScript client's `codes`, the docs' table and this crate's list are the same set.
//!
//! `clients/js/wsmq.js` is plain JavaScript with no build step, so it cannot import the Rust
//! list; this test reads its `export const codes = Object.freeze({ ... })` block instead.

use std::path::Path;

/// Codes the JS client defines for itself and the gateway never sends: a lost connection is
/// a client-side failure, not a JSON-RPC answer.
const CLIENT_ONLY: [(&str, i64); 1] = [("CONNECTION_LOST", -1)];

/// The `NAME: <integer>,` members of the `codes` object in `source`, in order.
fn js_codes(source: &str) -> Vec<(String, i64)> {
    let start = source
        .find("export const codes = Object.freeze({")
        .expect("wsmq.js exports `codes` as a frozen object literal");
    let block = &source[start..];
    let end = block
        .find("});")
        .expect("the codes object literal ends with `});`");
    block[..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("/*") && !line.starts_with('*'))
        .filter(|line| !line.starts_with("//"))
        .map(|line| {
            let (name, value) = line
                .trim_end_matches(',')
                .split_once(':')
                .unwrap_or_else(|| panic!("not a `NAME: code,` member: {line:?}"));
            let code = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("not an integer code: {line:?}"));
            (name.trim().to_owned(), code)
        })
        .collect()
}

#[test]
fn js_client_lists_exactly_the_rust_codes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/wsmq.js");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let js = js_codes(&source);
    let client_only: Vec<(String, i64)> = CLIENT_ONLY
        .iter()
        .map(|(name, code)| ((*name).to_owned(), *code))
        .collect();
    for member in &client_only {
        assert!(
            js.contains(member),
            "wsmq.js lost its client-side {member:?}"
        );
    }
    let from_js: Vec<(String, i64)> = js
        .into_iter()
        .filter(|member| !client_only.contains(member))
        .collect();
    let from_rust: Vec<(String, i64)> = wsmq_codes::ALL
        .iter()
        .map(|(name, code)| ((*name).to_owned(), *code))
        .collect();
    assert_eq!(
        from_js, from_rust,
        "clients/js/wsmq.js `codes` and wsmq_codes::ALL differ (same names, same order)"
    );
}

#[test]
fn protocol_docs_table_lists_exactly_the_rust_codes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md");
    let docs = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = docs
        .find("## Error codes")
        .expect("docs/protocol.md has an \"Error codes\" section");
    let rows: Vec<i64> = docs[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.split('|').nth(1)?.trim().parse().ok())
        .collect();
    let rust: Vec<i64> = wsmq_codes::ALL.iter().map(|(_, code)| *code).collect();
    let mut missing: Vec<i64> = rust.iter().filter(|c| !rows.contains(c)).copied().collect();
    let mut extra: Vec<i64> = rows.iter().filter(|c| !rust.contains(c)).copied().collect();
    missing.sort_unstable();
    extra.sort_unstable();
    assert_eq!(
        (missing, extra),
        (vec![], vec![]),
        "codes missing from / extra in the docs/protocol.md table"
    );
}

#[test]
fn reader_sees_every_member_including_the_commented_one() {
    let source = "x\nexport const codes = Object.freeze({\n  A: -1,\n  /** doc\n   * more */\n  B: -32000,\n});\n";
    assert_eq!(
        js_codes(source),
        [("A".to_owned(), -1), ("B".to_owned(), -32000)]
    );
}
