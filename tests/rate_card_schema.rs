//! `schemas/rate-card.schema.json` describes the files the loader reads:
//! the shipped rate cards, the example contract, and what both importers
//! write all validate against it (checked with Python's jsonschema), and
//! all of them load.

use std::path::Path;
use std::process::Command;
use usage_catalogs::ImportOptions;
use usage_integration_tests::{python, repo_root, unique};

#[test]
fn shipped_example_and_imported_rate_cards_follow_the_json_schema() {
    let dir = std::env::temp_dir().join(unique("schema"));
    std::fs::create_dir_all(&dir).unwrap();
    let catalogs = repo_root().join("data/price-catalogs");
    let options =
        |name: &str| ImportOptions { rate_card: name.into(), version: 1, effective_from: chrono::DateTime::UNIX_EPOCH };
    let genai = std::fs::read_to_string(catalogs.join("genai-prices-data.json")).unwrap();
    let (v, _) = usage_catalogs::genai_prices::import(&genai, &options("genai-prices")).unwrap();
    std::fs::write(dir.join("genai.toml"), v.to_toml()).unwrap();
    let litellm = std::fs::read_to_string(catalogs.join("litellm-model-prices.json")).unwrap();
    let (v, _) = usage_catalogs::litellm::import(&litellm, &options("litellm")).unwrap();
    std::fs::write(dir.join("litellm.toml"), v.to_toml()).unwrap();
    let example = repo_root().join("docs/examples/contract-acme.toml");

    // Everything loads with the pipeline's own loader, the contract included.
    for file in [dir.join("genai.toml"), dir.join("litellm.toml"), example.clone()] {
        let text = std::fs::read_to_string(&file).unwrap();
        usage_pricing::parse_document(Path::new(&file), &text).unwrap();
    }
    let mut docs = usage_pricing::read_dir_documents(&repo_root().join("rate-cards")).unwrap();
    docs.push((
        example.clone(),
        usage_pricing::parse_document(&example, &std::fs::read_to_string(&example).unwrap()).unwrap(),
    ));
    usage_pricing::build_book(Path::new("rate-cards"), docs, None).unwrap();

    // The README's example is a valid rate card.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Rate cards").expect("a Rate cards section")..];
    let start = section.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let example_text = &section[start..start + section[start..].find("```").unwrap()];
    let readme_card = usage_pricing::parse_version_file(Path::new("README.md"), example_text).unwrap();
    assert_eq!(readme_card.models.len(), 5);
    std::fs::write(dir.join("readme.toml"), example_text).unwrap();

    let output = Command::new(python())
        .arg(repo_root().join("tests/python/check_rate_card_schema.py"))
        .arg(repo_root().join("rate-cards"))
        .arg(&example)
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
