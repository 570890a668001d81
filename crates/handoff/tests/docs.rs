//! The documentation's configs are real: every ```toml block of the README
//! and docs/ that is a whole config passes `handoff check`.

mod common;

use common::*;

#[test]
fn toml_examples_in_the_docs_pass_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```toml\n") {
            let after = &rest[start + 8..];
            let end = after.find("```").unwrap();
            let block = &after[..end];
            rest = &after[end + 3..];
            // Fragments of one table (e.g. a lone [services.X.health]) are
            // shown for their keys, not as whole configs.
            if !block.contains("listen") && !block.contains("kind = \"haproxy\"") {
                continue;
            }
            let cfg = dir.path().join(format!("doc{checked}.toml"));
            std::fs::write(&cfg, block).unwrap();
            let out = std::process::Command::new(bin())
                .args(["check", "-c", cfg.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: this config does not pass check:\n{block}\n{}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found only {checked} configs in the docs");
}
